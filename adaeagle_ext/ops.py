"""One documented wrapper per adaeagle op, plus its fake (meta) implementation.

Every op under ``torch.ops.adaeagle`` writes caller-provided outputs and returns nothing (the hot
path: no allocation, no host sync). The wrappers here allocate those outputs unless ``out=`` is
given, and return them. Output shapes come from the arguments, never from data, so the fake
implementations need no data and the ops work under ``torch.compile``.

Conventions: index tensors int32; token ids int64; probabilities float32. A draft tree of request
b is a parents array in topological order (local node 0 is the root with parent -1, and
``0 <= parents[i] < i``); a ragged batch concatenates them with CSR offsets ``tree_indptr [B+1]``.
Trees hold at most 64 nodes, so an ancestor set is one int64 bit row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from adaeagle_ext._build import extension_available, require_extension

MAX_TREE_NODES = 64


def _op(name: str):
    require_extension()
    return getattr(torch.ops.adaeagle, name)


# ---------------------------------------------------------------------------------------------
# build_tree


class TreeArrays(NamedTuple):
    """Outputs of ``build_tree`` (N nodes, B requests)."""

    mask_bits: torch.Tensor  # int64 [N]: bit j set when local j is the node or an ancestor
    depth: torch.Tensor  # int32 [N]: root 0
    positions: torch.Tensor  # int64 [N]: prefix_len + depth
    first_child: torch.Tensor  # int32 [N]: local id, -1 for none
    next_sibling: torch.Tensor  # int32 [N]: local id, -1 for none
    leaf_paths: torch.Tensor  # int32 [B, max_leaves, max_depth+1]: root-to-leaf, -1 padded
    num_leaves: torch.Tensor  # int32 [B]


def build_tree(
    parents: torch.Tensor,
    tree_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_depth: int,
    max_leaves: int,
    *,
    out: TreeArrays | None = None,
    validate: bool = False,
) -> TreeArrays:
    """Ancestor bit rows, depths, positions, child/sibling links and leaf paths of draft trees.

    Args:
        parents: int32 [N], local parent of each node (-1 for the root, else ``< `` the node).
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        prefix_lens: int32 [B], committed tokens before each root.
        max_depth: deepest depth allowed (root 0), at most 63; sets the path width.
        max_leaves: most leaves a request may have, 1 to 64.
        out: optional preallocated outputs (the hot path).
        validate: on CUDA, check the trees on the host first (one sync). The CPU kernel always
            checks: a tree over 64 nodes, a root whose parent is not -1, a parent that is not
            earlier than its child, a depth over ``max_depth`` or more than ``max_leaves`` leaves
            raise a RuntimeError naming the request and node.

    Returns:
        TreeArrays; siblings are linked in ascending index order and leaves are in index order.
    """
    if out is None:
        n, batch = parents.numel(), tree_indptr.numel() - 1
        dev = parents.device
        i32, i64 = dict(dtype=torch.int32, device=dev), dict(dtype=torch.int64, device=dev)
        out = TreeArrays(
            torch.empty(n, **i64),
            torch.empty(n, **i32),
            torch.empty(n, **i64),
            torch.empty(n, **i32),
            torch.empty(n, **i32),
            torch.empty(max(batch, 0), max_leaves, max_depth + 1, **i32),
            torch.empty(max(batch, 0), **i32),
        )
    if validate and parents.device.type != "cpu":
        build_tree(parents.cpu(), tree_indptr.cpu(), prefix_lens.cpu(), max_depth, max_leaves)
    _op("build_tree")(parents, tree_indptr, prefix_lens, max_depth, max_leaves, *out)
    return out


# ---------------------------------------------------------------------------------------------
# kv_compact


# ---------------------------------------------------------------------------------------------
# verify_greedy


# ---------------------------------------------------------------------------------------------
# tree_attention and merge_attn_states


# ---------------------------------------------------------------------------------------------
# verify_sampling

VERIFY_CHAIN = 0
VERIFY_TREE_RECURSIVE = 1
VERIFY_TOPK = 2


class SamplingVerifyOutputs(NamedTuple):
    """Outputs of ``verify_sampling`` (B requests, P = max_depth + 1)."""

    accept_local: torch.Tensor  # int32 [B, P]: accepted path as local ids, root first, -1 padded
    accept_len: torch.Tensor  # int32 [B]: accepted drafts (root and final token excluded)
    out_tokens: torch.Tensor  # int64 [B, P]: accepted drafts then the final token, -1 padded


def verify_sampling(
    candidates: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    tree_indptr: torch.Tensor,
    mode: int,
    max_depth: int,
    *,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    out: SamplingVerifyOutputs | None = None,
    scratch: torch.Tensor | None = None,
    validate: bool = False,
) -> SamplingVerifyOutputs:
    """Lossless verification of draft trees at temperature > 0 (speculative rejection sampling).

    From each root the walk tests the children of the current node in sibling order; the first
    accepted child becomes the current node, with its own fresh target row. When every child is
    rejected (or the node is a leaf, or ``max_depth`` drafts are accepted) one final token is
    sampled: the correction from what remains of the target distribution, or the bonus token from
    the last accepted node's target row. The emitted tokens follow the target distribution
    exactly, whatever the draft.

    Modes (``algorithms.md`` section 6):
        VERIFY_CHAIN (0): each node has at most one child; accept x with probability
            min(1, p(x)/q(x)); on rejection sample from norm(max(p - q, 0)).
        VERIFY_TREE_RECURSIVE (1): SpecInfer multi-round: for each child in order, accept with
            min(1, p(x)/q_child(x)), else p <- norm(max(p - q_child, 0)). Exact for siblings drawn
            independently from q and for siblings drawn without replacement when each child's row
            is q conditioned on its earlier siblings (EAGLE-1).
        VERIFY_TOPK (2): deterministic proposals (EAGLE-2 top-k, no draft_probs): accept x with
            probability p(x) under the current p; on rejection set p(x) = 0 and renormalise.
            A repeated sibling token is skipped.

    Sampling a final token: inverse CDF over the vocabulary in index order at u * sum(weights),
    with partial sums in float64. A residual that loses all its mass through float round-off
    (p <= q everywhere) is not used: the walk keeps the p it had before that sibling.

    Args:
        candidates: int64 [N], the token of each node (roots ignored).
        target_probs: float32 [N, V]; row i is the target distribution after node i, already
            processed by temperature / top-k / top-p.
        draft_probs: float32 [N, V], or None in topk mode; row i is the draft distribution that
            proposed node i (for siblings drawn without replacement, conditioned on the earlier
            siblings). Required in the chain and tree_recursive modes.
        first_child, next_sibling: int32 [N], local ids from ``build_tree`` (-1 for none).
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        mode: VERIFY_CHAIN, VERIFY_TREE_RECURSIVE or VERIFY_TOPK.
        max_depth: the most drafts one request may accept (P = max_depth + 1 columns, at most 64).
        uniforms: float32 [N + B] in [0, 1): uniforms[i] is the coin of node i's acceptance
            test, uniforms[N + b] the coin of request b's final token. The op is deterministic
            given them. When None they are drawn with ``torch.rand(N + B, generator=generator)``
            on the inputs' device, so seeded runs reproduce exactly.
        generator: the generator for the uniforms when they are not given.
        out: preallocated outputs (the hot path); their width must be max_depth + 1.
        scratch: float32 [B, 2, V] working memory for the residual rows (allocated when None;
            pass one to keep the call allocation-free).
        validate: on CUDA, first run the checks of the CPU kernel on host copies (one sync). The
            CPU kernel always checks: a tree of 0 or more than 64 nodes, a child or sibling link
            that is not a later node of the same tree, a tested token outside [0, V), a branching
            tree in chain mode, or a distribution to sample without positive mass raise a
            RuntimeError naming the request and node. Unchecked on CUDA, such input gives
            memory-safe but unspecified results (token -1 for a distribution without mass).

    Returns:
        SamplingVerifyOutputs(accept_local int32 [B, P], accept_len int32 [B],
        out_tokens int64 [B, P]).
    """
    n, batch = candidates.numel(), tree_indptr.numel() - 1
    dev = candidates.device
    if uniforms is None:
        uniforms = torch.rand(n + max(batch, 0), generator=generator, device=dev)
    if out is None:
        width = max_depth + 1
        out = SamplingVerifyOutputs(
            torch.empty(max(batch, 0), width, dtype=torch.int32, device=dev),
            torch.empty(max(batch, 0), dtype=torch.int32, device=dev),
            torch.empty(max(batch, 0), width, dtype=torch.int64, device=dev),
        )
    elif out.accept_local.dim() == 2 and out.accept_local.shape[1] != max_depth + 1:
        raise ValueError(
            f"verify_sampling: out.accept_local has width {out.accept_local.shape[1]}, "
            f"expected max_depth + 1 = {max_depth + 1}"
        )
    if scratch is None:
        vocab = target_probs.shape[-1] if target_probs.dim() == 2 else 0
        scratch = torch.empty(max(batch, 0), 2, vocab, dtype=torch.float32, device=dev)
    if validate and dev.type != "cpu":
        verify_sampling(
            *(t.cpu() if t is not None else None
              for t in (candidates, target_probs, draft_probs, first_child, next_sibling,
                        tree_indptr)),
            mode, max_depth, uniforms=uniforms.cpu(),
        )
    _op("verify_sampling")(
        candidates, target_probs, draft_probs, first_child, next_sibling, tree_indptr, uniforms,
        mode, *out, scratch,
    )
    return out



# ---------------------------------------------------------------------------------------------
# ldlp_mlp


# ---------------------------------------------------------------------------------------------
# linear


# ---------------------------------------------------------------------------------------------
# fake (meta) implementations: every op only writes its outputs in place, so one no-op serves
# all of them.


def _register_fakes() -> None:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("adaeagle::")]
    for name in names:
        torch.library.register_fake(name)(lambda *args, **kwargs: None)


if extension_available():
    _register_fakes()
