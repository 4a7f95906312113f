"""The interface every decoding method implements: propose a draft tree, verify, observe.

One decoding step of the generation loop (``spec/generate.py``):

1. ``propose``: a draft tree per active request whose root (local node 0) is the request's
   pending token (sampled but not yet run through the target);
2. the loop runs the target once over all trees (``LlamaForCausalLM.forward``);
3. ``verify``: the accepted path and the bonus/correction token per request;
4. the loop compacts the KV cache (``kv_compact``) and commits the tokens;
5. ``observe``: the strategy updates its drafter state (features, n-gram tables, ...).

``ar`` is the degenerate case: the tree is just the root, and verification samples one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.spec.sampling import SamplingParams, target_probs


@dataclass
class DraftTree:
    """A ragged batch of draft trees in CSR form (idle requests own no nodes).

    tokens: int64 [N], node tokens (node 0 of each request is its pending root token).
    parents: int32 [N], local parent ids (-1 at each root).
    tree_indptr: int32 [B+1].
    is_chain: True when every node's parent is the node before it (cheaper inputs).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    tree_indptr: torch.Tensor
    is_chain: bool = False


@dataclass
class Acceptance:
    """accept_local int32 [B, P] (root first, -1 padded), accept_len int32 [B] (accepted
    drafts), out_tokens int64 [B, P] (accepted drafts then the bonus token, -1 padded)."""

    accept_local: torch.Tensor
    accept_len: torch.Tensor
    out_tokens: torch.Tensor


@dataclass
class StepState:
    """What a strategy sees each step.

    roots: int64 [B] pending token per request; active: bool [B];
    prefix_lens: int32 [B] cached tokens per request (the tree goes right after them);
    history: per request, all tokens so far (prompt + generated, the pending root last).
    remaining: int64 [B], tokens each request may still emit (the pending root included), or
    None when unknown; a step commits at most (accepted drafts + 1) tokens.
    """

    roots: torch.Tensor
    active: torch.Tensor
    prefix_lens: torch.Tensor
    history: list[list[int]]
    sampling: SamplingParams
    generators: list[torch.Generator]
    remaining: torch.Tensor | None = None


class Strategy:
    """Base class; subclasses override ``propose`` (and ``verify`` for sampling)."""

    name = "base"
    max_tree_nodes = 1  # the most nodes one request's tree can hold (cache slack)

    def setup(self, model, batch: int) -> None:
        """Called once per generate call, before prefill."""

    def reserve(self, max_seq_len: int) -> None:
        """Called once per generate call after ``setup``, with the target cache's rows per
        request: a strategy sizes its own buffers here, once, instead of growing them."""

    def observe_prefill(self, tokens: torch.Tensor, hidden: torch.Tensor,
                        tree_indptr: torch.Tensor) -> None:
        """Features of one prefill chunk: tokens int64 [N], hidden [N, H] (CSR over B)."""

    def propose(self, state: StepState) -> DraftTree:
        raise NotImplementedError

    def verify(self, state: StepState, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        """Greedy tree verification (``verify_greedy``); logits float32 [N, V]."""
        if not state.sampling.greedy:
            raise NotImplementedError(f"method {self.name!r} has no sampling verification yet")
        active = active_trees(state, tree, self.max_tree_nodes - 1)
        got = ops.verify_greedy(tree.tokens, logits.argmax(-1), active.arrays.first_child,
                                active.arrays.next_sibling, active.indptr, active.max_depth)
        return active.scatter(got, state.roots.numel())

    def observe(self, state: StepState, tree: DraftTree, acceptance: Acceptance,
                hidden: torch.Tensor) -> None:
        """Called after the cache holds the accepted path; hidden [N, H] of the tree nodes."""


@dataclass
class ActiveTrees:
    """The trees of the active requests only (idle requests own empty trees, which the tree
    ops reject): ``rows`` int64 [A] their batch indices, ``indptr`` int32 [A+1], ``arrays``
    the ``build_tree`` outputs."""

    rows: torch.Tensor
    indptr: torch.Tensor
    arrays: ops.TreeArrays
    max_depth: int

    def scatter(self, got, batch: int) -> Acceptance:
        """Per-active verification outputs (accept_local, accept_len, out_tokens) -> the whole
        batch, idle rows -1 padded with 0 accepted."""
        width = self.max_depth + 1
        local = torch.full((batch, width), -1, dtype=torch.int32)
        n_acc = torch.zeros(batch, dtype=torch.int32)
        out = torch.full((batch, width), -1, dtype=torch.int64)
        local[self.rows], n_acc[self.rows], out[self.rows] = got[0], got[1], got[2]
        return Acceptance(local, n_acc, out)


def active_trees(state: StepState, tree: DraftTree, max_depth: int) -> ActiveTrees:
    """``build_tree`` over the active requests' trees.

    The result is kept on ``tree``: the generation loop builds it once per step for the
    target's positions and mask bits, and ``verify`` gets the same arrays back without a
    second ``build_tree`` (a different ``max_depth`` builds anew).
    """
    cached = getattr(tree, "_active_trees", None)
    if cached is not None and cached.max_depth == max_depth:
        return cached
    rows = state.active.nonzero().flatten()
    indptr = torch.cat([tree.tree_indptr[:1], tree.tree_indptr[1:][rows]])
    arrays = ops.build_tree(tree.parents, indptr, state.prefix_lens[rows].contiguous(),
                            max_depth, ref.MAX_TREE_NODES)
    got = ActiveTrees(rows, indptr, arrays, max_depth)
    tree._active_trees = got
    return got


def verify_sampling_trees(state: StepState, tree: DraftTree, logits: torch.Tensor, mode: int,
                          draft_q: torch.Tensor | None, max_depth: int) -> Acceptance:
    """Sampling (T > 0) verification of the active requests' trees by ``ops.verify_sampling``
    in ``mode``: target probabilities from ``logits`` float32 [N, V] under the user's sampling
    params, ``draft_q`` [N, V] proposal rows (None for top-k mode), uniforms drawn from each
    request's own generator (one per node, then one per request for the bonus token)."""
    active = active_trees(state, tree, max_depth)
    sizes = (active.indptr[1:] - active.indptr[:-1]).tolist()
    coins = [torch.rand(s + 1, generator=state.generators[b])
             for s, b in zip(sizes, active.rows.tolist(), strict=True)]
    uniforms = torch.cat([c[:-1] for c in coins] + [torch.stack([c[-1] for c in coins])])
    got = ops.verify_sampling(tree.tokens, target_probs(logits, state.sampling), draft_q,
                              active.arrays.first_child, active.arrays.next_sibling,
                              active.indptr, mode, active.max_depth, uniforms=uniforms)
    return active.scatter(got, state.roots.numel())


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: makes ``method=cls.name`` available to ``generate``."""
    _REGISTRY[cls.name] = cls
    return cls


def make_strategy(method: str | Strategy, **options) -> Strategy:
    """A strategy from its name (``"ar"``; ``"name:arg"`` passes ``arg`` as ``spec``)."""
    if isinstance(method, Strategy):
        return method
    name, _, arg = method.partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(sorted(_REGISTRY))}")
    if arg:
        options["spec"] = arg
    return _REGISTRY[name](**options)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)
