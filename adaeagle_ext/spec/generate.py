"""The generation loop shared by every method: prefill, then propose, verify, accept, compact."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from adaeagle_ext.models.kv_compact import kv_compact_
from adaeagle_ext.models.llama import LlamaForCausalLM
from adaeagle_ext.models.tree_inputs import MAX_TREE_NODES, chain_inputs
from adaeagle_ext.spec import adaeagle as _adaeagle  # noqa: F401  (adaeagle, adaeagle-ddd)
from adaeagle_ext.spec import adaeagle_tree as _adaeagle_tree  # noqa: F401
from adaeagle_ext.spec import aded as _aded  # noqa: F401  (registers "aded")
from adaeagle_ext.spec import ar as _ar  # noqa: F401  (registers "ar")
from adaeagle_ext.spec import chain as _chain  # noqa: F401  (registers "chain")
from adaeagle_ext.spec import eagle as _eagle  # noqa: F401  (registers "eagle")
from adaeagle_ext.spec import eagle2 as _eagle2  # noqa: F401  (registers "eagle2")
from adaeagle_ext.spec import oracle as _oracle  # noqa: F401  (registers "oracle")
from adaeagle_ext.spec import threshold_chains as _thresholds  # noqa: F401  (ddd, maxconf)
from adaeagle_ext.spec.request import RequestState, StreamCallback
from adaeagle_ext.spec.sampling import SamplingParams, sample
from adaeagle_ext.spec.strategy import StepState, Strategy, active_trees, make_strategy


@dataclass
class GenerationStats:
    """Counters of one generate call (all requests together)."""

    new_tokens: int = 0
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    forwards: int = 0
    decode_steps: int = 0
    accepted_per_step: list[float] = field(default_factory=list)
    draft_s: float = 0.0  # in strategy.propose + strategy.observe (drafting)
    verify_s: float = 0.0  # in the target forward + strategy.verify + kv_compact
    draft_tokens: list[int] = field(default_factory=list)  # per active request per step: nodes - 1

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, prefill included."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean tokens committed per request per target step (tau, bonus token included)."""
        a = self.accepted_per_step
        return sum(a) / len(a) if a else 0.0

    @property
    def mean_draft_len(self) -> float:
        """Mean drafted nodes (root excluded) per request per step."""
        d = self.draft_tokens
        return sum(d) / len(d) if d else 0.0

    def accepted_histogram(self) -> dict[int, int]:
        """{tokens committed in one step: how many request-steps committed that many}."""
        hist: dict[int, int] = {}
        for a in self.accepted_per_step:
            hist[int(a)] = hist.get(int(a), 0) + 1
        return dict(sorted(hist.items()))

    def as_dict(self) -> dict:
        return dict(new_tokens=self.new_tokens, prompt_tokens=self.prompt_tokens,
                    prefill_s=self.prefill_s, decode_s=self.decode_s, forwards=self.forwards,
                    decode_steps=self.decode_steps, tokens_per_s=self.tokens_per_s,
                    mean_accepted=self.mean_accepted, draft_s=self.draft_s,
                    verify_s=self.verify_s, mean_draft_len=self.mean_draft_len,
                    accepted_histogram=self.accepted_histogram())


@dataclass
class RequestOutput:
    """token_ids: generated ids (no prompt, no EOS); finish_reason: "eos" | "stop" | "length"."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_len: int


def generate_ids(
    model: LlamaForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    method: str | Strategy = "ar",
    max_new_tokens: int = 128,
    sampling: SamplingParams | None = None,
    eos_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    stream: StreamCallback | None = None,
    max_seq_len: int | None = None,
) -> tuple[list[RequestOutput], GenerationStats]:
    """Generate continuations of a batch of token-id prompts (of different lengths).

    Args:
        model: the target.
        prompts: B lists of token ids (each non-empty).
        method: a registered method name (``"ar"``, ...) or a Strategy instance.
        max_new_tokens: per request; EOS is not counted.
        sampling: temperature / top-k / top-p / seed (seed s gives request i seed s + i).
        eos_ids: ids that end a request. stop: strings that end a request (needs ``decode``).
        decode: token ids -> text. stream: called (request index, new text) during generation.
        max_seq_len: cache rows per request (default: longest prompt + max_new_tokens + tree).

    Returns:
        (B RequestOutputs in prompt order, GenerationStats).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vocab = model.config.vocab_size
    for i, p in enumerate(prompts):
        bad = next((t for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt {i} holds token id {bad}, outside the model's vocabulary "
                             f"[0, {vocab})")
    sampling = sampling or SamplingParams()
    strategy = make_strategy(method)
    batch = len(prompts)
    requests = [RequestState(i, p, max_new_tokens, eos_ids, stop, decode, stream)
                for i, p in enumerate(prompts)]
    need = max(len(p) for p in prompts) + max_new_tokens + strategy.max_tree_nodes
    if max_seq_len is None:
        max_seq_len = need
    elif max_seq_len < need:
        raise ValueError(f"max_seq_len={max_seq_len} is below the {need} rows this call needs")
    if max_seq_len > model.config.max_position_embeddings:
        raise ValueError(f"prompt + max_new_tokens needs {max_seq_len} positions; the model "
                         f"supports {model.config.max_position_embeddings}")
    stats = GenerationStats(prompt_tokens=sum(len(p) for p in prompts))
    seed = sampling.seed if sampling.seed is not None else int(torch.seed() % (1 << 62))
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    strategy.setup(model, batch)
    strategy.reserve(max_seq_len)
    cache = model.new_cache(batch, max_seq_len)

    t0 = time.perf_counter()
    last_logits = _prefill(model, cache, prompts, strategy, stats)
    for b, r in enumerate(requests):
        if not r.done:
            r.commit([sample(last_logits[b], sampling, generators[b])])
        r.flush_stream()
    stats.prefill_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    while not all(r.done for r in requests):
        active = torch.tensor([not r.done for r in requests])
        state = StepState(
            roots=torch.tensor([r.history[-1] for r in requests], dtype=torch.int64),
            active=active, prefix_lens=cache.lens.clone(),
            history=[r.history for r in requests], sampling=sampling, generators=generators,
            remaining=torch.tensor([r.max_new_tokens - len(r.out_ids) for r in requests]))
        t_draft = time.perf_counter()
        tree = strategy.propose(state)
        t_verify = time.perf_counter()
        stats.draft_s += t_verify - t_draft
        sizes = _check_tree(tree, requests)
        stats.draft_tokens.extend(s - 1 for s in sizes if s > 0)
        # One build_tree per step: its positions and mask bits feed the target, and verify
        # finds the same arrays on the tree (active_trees). Within the strategy's node bound
        # the depth fits verify's max_depth; a larger tree gets the widest bound.
        bound = strategy.max_tree_nodes if max(sizes) <= strategy.max_tree_nodes else 64
        arrays = active_trees(state, tree, min(bound, MAX_TREE_NODES) - 1).arrays
        logits, hidden = model(tree.tokens, arrays.positions, tree.tree_indptr,
                               arrays.mask_bits, state.prefix_lens, cache)
        stats.forwards += 1
        stats.decode_steps += 1
        acc = strategy.verify(state, tree, logits)
        kv_compact_(cache, acc.accept_local, acc.accept_len, state.prefix_lens, active)
        out_rows = acc.out_tokens.tolist()
        for b in active.nonzero().flatten().tolist():
            n_new = int(acc.accept_len[b]) + 1
            requests[b].commit(out_rows[b][:n_new])
            stats.accepted_per_step.append(float(n_new))
        t_observe = time.perf_counter()
        stats.verify_s += t_observe - t_verify
        strategy.observe(state, tree, acc, hidden)
        stats.draft_s += time.perf_counter() - t_observe
        for r in requests:
            r.flush_stream()
    stats.decode_s = time.perf_counter() - t0

    outputs = [RequestOutput(r.out_ids, r.text, r.finish_reason or "length", len(r.prompt_ids))
               for r in requests]
    stats.new_tokens = sum(len(o.token_ids) for o in outputs)
    return outputs, stats


def _prefill(model, cache, prompts, strategy, stats) -> torch.Tensor:
    """Run all prompts through the target in chains of <= 64 tokens; logits [B, V] of each
    prompt's last token."""
    batch = len(prompts)
    lens = [len(p) for p in prompts]
    last = [None] * batch
    for start in range(0, max(lens), MAX_TREE_NODES):
        sizes = torch.tensor([max(0, min(MAX_TREE_NODES, n - start)) for n in lens])
        prefix = torch.tensor([min(start, n) for n in lens], dtype=torch.int32)
        positions, indptr, mask_bits = chain_inputs(sizes, prefix)
        tokens = torch.tensor([t for p in prompts for t in p[start:start + MAX_TREE_NODES]],
                              dtype=torch.int64)
        ends = indptr[1:].to(torch.int64) - 1
        finishing = [b for b in range(batch) if sizes[b] > 0 and start + sizes[b] == lens[b]]
        rows = ends[finishing]
        logits, hidden = model(tokens, positions, indptr, mask_bits, prefix, cache,
                               logit_rows=rows)
        stats.forwards += 1
        for i, b in enumerate(finishing):
            last[b] = logits[i]
        strategy.observe_prefill(tokens, hidden, indptr)
    cache.lens.copy_(torch.tensor(lens, dtype=torch.int32))
    return torch.stack(last)


def _check_tree(tree, requests) -> list[int]:
    """The per-request tree sizes, after checking them against the requests' states."""
    ptr = tree.tree_indptr.tolist()
    sizes = [b - a for a, b in zip(ptr[:-1], ptr[1:], strict=True)]
    if len(sizes) != len(requests):
        raise ValueError("a strategy's tree must have one CSR entry per request")
    if any((s > 0) == r.done for s, r in zip(sizes, requests, strict=True)):
        raise ValueError("a strategy's tree must give active requests nodes and idle ones none")
    if max(sizes) > MAX_TREE_NODES:
        raise ValueError(f"a draft tree holds at most {MAX_TREE_NODES} nodes")
    return sizes
