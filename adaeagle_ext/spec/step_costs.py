"""What a draft step and a verify pass cost on this machine, and the draft size that pays best.

A step of speculative decoding spends ``draft`` time (EAGLE-head forwards) and one target
``verify`` pass over the T drafted tokens (root included); it commits the accepted drafts plus
one token. On a GPU a verify pass costs about the same for T = 1..64, so big drafts are free;
on this CPU it grows with T (a few draft steps per target step, not 20), so the best draft size
depends on the machine. ``step_costs`` times both once per process per (target, head, dtype,
threads); ``best_draft_size`` then picks the size with the most expected tokens per second.

The expected-tokens model: ``gains[i]`` is the expected number of accepted tokens the (i+1)-th
draft node adds. For a chain that is P(the first i+1 drafts are all accepted); for a tree it is
the node's path-acceptance probability (at most one node per depth lies on the accepted path,
so the expected accepted length is the sum over nodes). A step with n draft nodes then yields
``1 + sum(gains[:n])`` tokens in ``fixed_s + n * per_node_s + verify_s(n + 1)`` seconds.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from adaeagle_ext.models.tree_inputs import MAX_TREE_NODES, chain_inputs

VERIFY_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
DRAFT_SIZES = (1, 2, 4, 8, 16, 32)
DEFAULT_CACHE_LEN = 256  # cached tokens behind the timed passes (a prompt plus some output)
DEFAULT_REPS = 3
DEFAULT_BUDGET_S = 2.5  # stop adding repetitions once the next round would pass this
DRAFT_TOP_K = 8  # the top-k taken after each timed draft step (as tree drafting does)


def _envelope(sizes: Sequence[int], times: Sequence[float], what: str) -> tuple[float, ...]:
    if len(sizes) != len(times):
        raise ValueError(f"{what}: {len(sizes)} sizes but {len(times)} times")
    if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or any(s < 1 for s in sizes):
        raise ValueError(f"{what} sizes must be positive and strictly increasing, got {sizes}")
    if any(not (math.isfinite(t) and t >= 0) for t in times):
        raise ValueError(f"{what} times must be finite and >= 0, got {times}")
    out, top = [], 0.0
    for t in times:  # a bigger pass never truly costs less: noise must not steer the argmax
        top = max(top, t)
        out.append(top)
    return tuple(out)


def _interp(x: float, xs: tuple[int, ...], ys: tuple[float, ...]) -> float:
    """Piecewise-linear through (xs, ys); flat below xs[0], the last slope beyond xs[-1]."""
    if x <= xs[0] or len(xs) == 1:
        return ys[0] if x <= xs[0] else ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + w * (ys[i] - ys[i - 1])
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


@dataclass(frozen=True)
class StepCosts:
    """Median seconds of a target verify pass over T tokens and of one draft step over M nodes.

    verify_sizes / verify_times: the measured T and seconds; draft_sizes / draft_times: the
    measured M and seconds (empty when no head was timed); reps: repetitions behind each
    median (0 for hand-made tables); cache_len: cached tokens behind the passes.
    """

    verify_sizes: tuple[int, ...]
    verify_times: tuple[float, ...]
    draft_sizes: tuple[int, ...] = ()
    draft_times: tuple[float, ...] = ()
    reps: int = 0
    cache_len: int = 0
    _verify_env: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _draft_env: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.verify_sizes:
            raise ValueError("StepCosts needs at least one verify size")
        object.__setattr__(self, "_verify_env",
                           _envelope(self.verify_sizes, self.verify_times, "verify"))
        object.__setattr__(self, "_draft_env",
                           _envelope(self.draft_sizes, self.draft_times, "draft"))

    def verify_s(self, tokens: float) -> float:
        """Seconds of one target pass over ``tokens`` tree tokens (interpolated; the measured
        medians under a running maximum, so the cost never falls as ``tokens`` grows)."""
        return _interp(tokens, self.verify_sizes, self._verify_env)

    def draft_s(self, nodes: float) -> float:
        """Seconds of one draft step over ``nodes`` nodes (head forward + draft logits +
        top-k), interpolated like ``verify_s``.

        Raises:
            ValueError: no draft step was timed.
        """
        if not self.draft_sizes:
            raise ValueError("these step costs hold no draft timings (measured without a head)")
        return _interp(nodes, self.draft_sizes, self._draft_env)

    def table(self) -> str:
        """A markdown table of the measured medians (milliseconds)."""
        lines = ["| verify T | ms |  | draft M | ms |", "|---|---|---|---|---|"]
        rows = max(len(self.verify_sizes), len(self.draft_sizes))
        for i in range(rows):
            v = (f"{self.verify_sizes[i]} | {1e3 * self.verify_times[i]:.1f}"
                 if i < len(self.verify_sizes) else " | ")
            d = (f"{self.draft_sizes[i]} | {1e3 * self.draft_times[i]:.2f}"
                 if i < len(self.draft_sizes) else " | ")
            lines.append(f"| {v} |  | {d} |")
        return "\n".join(lines)


# --- the size rule (pure) -------------------------------------------------------------------


def expected_rates(gains: Sequence[float], costs: StepCosts, *, fixed_s: float = 0.0,
                   per_node_s: float = 0.0) -> list[float]:
    """Expected tokens per second of a step with n = 0..len(gains) draft nodes.

    Args:
        gains: expected accepted tokens added by each further draft node (see the module doc).
        costs: the verify costs (``verify_s(n + 1)``: the root plus n drafts).
        fixed_s: draft seconds the step pays whatever n is; per_node_s: seconds per node.

    Returns:
        len(gains) + 1 rates: ``(1 + sum(gains[:n])) / (fixed_s + n * per_node_s +
        costs.verify_s(n + 1))``.
    """
    if fixed_s < 0 or per_node_s < 0:
        raise ValueError(f"fixed_s and per_node_s must be >= 0, got {fixed_s}, {per_node_s}")
    rates, tokens = [], 1.0
    for n in range(len(gains) + 1):
        if n:
            g = float(gains[n - 1])
            if not (math.isfinite(g) and g >= 0):
                raise ValueError(f"gains must be finite and >= 0, got {g} at {n - 1}")
            tokens += g
        rates.append(tokens / (fixed_s + n * per_node_s + costs.verify_s(n + 1)))
    return rates


def best_draft_size(gains: Sequence[float], costs: StepCosts, *, fixed_s: float = 0.0,
                    per_node_s: float = 0.0, min_size: int = 0,
                    max_size: int | None = None) -> int:
    """The number of draft nodes n in [min_size, max_size] (capped at len(gains)) with the
    most expected tokens per second (``expected_rates``); ties go to the smaller n."""
    top = len(gains) if max_size is None else min(max_size, len(gains))
    if min_size < 0 or min_size > top:
        raise ValueError(f"min_size must be in [0, {top}] (max_size / len(gains)), got {min_size}")
    rates = expected_rates(gains[:top], costs, fixed_s=fixed_s, per_node_s=per_node_s)
    best = min_size
    for n in range(min_size + 1, top + 1):
        if rates[n] > rates[best]:
            best = n
    return best


def chain_gains(acceptance: Sequence[float]) -> list[float]:
    """Per-depth acceptance estimates (P(draft d accepted | drafts before it accepted), each in
    [0, 1]) -> gains: P(drafts 1..d all accepted)."""
    out, p = [], 1.0
    for d, a in enumerate(acceptance):
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"acceptance[{d}] must be in [0, 1], got {a}")
        p *= a
        out.append(p)
    return out


def gains_from_length(length: float, max_size: int) -> list[float]:
    """Gains of a chain whose expected accepted length is ``length`` (e.g. the LDLP's raw
    output): every draft accepted with the same rate a = length / (1 + length), so
    P(drafts 1..d accepted) = a^d and an endless chain accepts ``length`` tokens on average."""
    if not (math.isfinite(length) and length >= 0) or max_size < 0:
        raise ValueError(f"length must be finite and >= 0 and max_size >= 0, got {length}, "
                         f"{max_size}")
    a = length / (1.0 + length)
    return [a ** d for d in range(1, max_size + 1)]


# --- measuring ------------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def step_costs(model, head=None, **options) -> StepCosts:
    """``measure_step_costs(model, head, **options)``, measured once per process per (target
    object, head object, dtype, threads, options): a benchmark pays it once."""
    key = (id(head), model.dtype, torch.get_num_threads(), tuple(sorted(options.items())))
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is not None and (head is None or hit[0]() is head):
        return hit[1]
    costs = measure_step_costs(model, head, **options)
    per_model[key] = (weakref.ref(head) if head is not None else None, costs)
    return costs


@torch.no_grad()
def measure_step_costs(model, head=None, *, cache_len: int = DEFAULT_CACHE_LEN,
                       reps: int = DEFAULT_REPS, budget_s: float = DEFAULT_BUDGET_S,
                       verify_sizes: Sequence[int] = VERIFY_SIZES,
                       draft_sizes: Sequence[int] = DRAFT_SIZES) -> StepCosts:
    """Time target verify passes and EAGLE-head draft steps on this machine (no caching).

    Each timed pass runs one request with ``cache_len`` cached tokens: the target over T chain
    tokens (logits of every row, as verification needs), the head over M new nodes plus their
    draft logits, log-softmax and top-k. Sizes are timed in interleaved rounds (so load from
    other processes spreads over all sizes) after one warm-up pass of each kind; the first
    round always runs, later ones (up to ``reps``) only while ``budget_s`` allows.

    Args:
        model: the target (LlamaForCausalLM); head: its EagleHead, or None (verify only).
        verify_sizes, draft_sizes: the T and M to time (each in 1..64, increasing).

    Returns:
        StepCosts holding the median of each size.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for what, sizes in (("verify_sizes", verify_sizes), ("draft_sizes", draft_sizes)):
        if any(not 1 <= s <= MAX_TREE_NODES for s in sizes):
            raise ValueError(f"{what} must lie in [1, {MAX_TREE_NODES}], got {list(sizes)}")
    room = model.config.max_position_embeddings - MAX_TREE_NODES
    cache_len = max(0, min(cache_len, room))
    gen = torch.Generator().manual_seed(0)
    prefix = torch.tensor([cache_len], dtype=torch.int32)
    target_cache = model.new_cache(1, cache_len + MAX_TREE_NODES)
    vocab = model.config.vocab_size
    on_gpu = model.model.norm.weight.device.type == "cuda"

    def verify_pass(t: int) -> None:
        pos, indptr, bits = chain_inputs(torch.tensor([t]), prefix)
        tokens = torch.randint(0, vocab, (t,), generator=gen)
        model(tokens, pos, indptr, bits, prefix, target_cache)

    passes = [("v", t, verify_pass) for t in verify_sizes]
    if head is not None:
        head_cache = head.new_cache(1, cache_len + MAX_TREE_NODES)
        hidden = model.config.hidden_size

        def draft_pass(m: int) -> None:
            pos, indptr, bits = chain_inputs(torch.tensor([m]), prefix)
            tokens = torch.randint(0, vocab, (m,), generator=gen)
            feats = torch.randn(m, hidden, generator=gen).to(head.dtype)
            out = head.forward_tree(tokens, feats, pos, head_cache, prefix, indptr, bits)
            logp = torch.log_softmax(head.logits(out), dim=-1)
            torch.topk(logp, min(DRAFT_TOP_K, logp.shape[-1]), dim=-1)

        passes = [("d", m, draft_pass) for m in draft_sizes] + passes
        draft_pass(draft_sizes[0] if draft_sizes else 1)
    verify_pass(verify_sizes[0] if verify_sizes else 1)

    times: dict[tuple[str, int], list[float]] = {(k, s): [] for k, s, _ in passes}
    start = time.perf_counter()
    for r in range(reps):
        t_round = time.perf_counter()
        for kind, size, run in passes:
            t0 = time.perf_counter()
            run(size)
            if on_gpu:
                torch.cuda.synchronize()
            times[(kind, size)].append(time.perf_counter() - t0)
        now = time.perf_counter()
        if r + 1 < reps and (now - start) + (now - t_round) > budget_s:
            break
    done = len(times[passes[0][:2]]) if passes else 0

    def medians(kind: str, sizes: Sequence[int]) -> tuple[float, ...]:
        return tuple(statistics.median(times[(kind, s)]) for s in sizes)

    return StepCosts(tuple(verify_sizes), medians("v", verify_sizes),
                     tuple(draft_sizes) if head is not None else (),
                     medians("d", draft_sizes) if head is not None else (),
                     reps=done, cache_len=cache_len)
