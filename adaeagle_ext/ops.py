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


# ---------------------------------------------------------------------------------------------
# ldlp_mlp


# ---------------------------------------------------------------------------------------------
# linear


# ---------------------------------------------------------------------------------------------
# aded_draft


class DraftTree(NamedTuple):
    """A padded draft tree of one request (``aded_draft``, ``aded_paths_to_tree``)."""

    parents: torch.Tensor  # int32 [max_nodes]: topological, root 0 has -1; -1 past num_nodes
    tokens: torch.Tensor  # int64 [max_nodes]: token per node, root = last context token; -1 pad
    num_nodes: torch.Tensor  # int32 [1]: nodes in use, root included (>= 2)


def _empty_tree(max_nodes: int) -> DraftTree:
    return DraftTree(torch.empty(max_nodes, dtype=torch.int32),
                     torch.empty(max_nodes, dtype=torch.int64),
                     torch.empty(1, dtype=torch.int32))


def aded_draft(
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    online: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    context: torch.Tensor,
    *,
    iterations: int = 150,
    max_len: int = 4,
    top_paths: int = 24,
    max_nodes: int = MAX_TREE_NODES,
    c1: float = 32.0,
    c2: float = 8.0,
    fallback_token: int = 100,
    seed: int = 0,
    out: DraftTree | None = None,
) -> DraftTree:
    """ADED's MCTS draft search over a tri-gram table (CPU only).

    Rows are CSR keyed by the bigram ``t1 << 32 | t2`` (see ``drafters/trigram.py``). The
    search starts from the last two context tokens, runs ``iterations`` PUCT iterations with
    paths of at most ``max_len`` nodes counting the root, keeps the ``top_paths`` most visited
    paths, extends each greedily by one token and merges them into a tree of at most
    ``max_nodes`` nodes. When nothing is found (unseen bigram, one-token context) the tree is
    the root plus ``fallback_token``. Same inputs and seed give the same tree.

    Args:
        table: stored table (keys int64 [K] strictly ascending, offsets int32 [K+1], succ int32
            [E], vals float32 [E]); never modified.
        online: per-generation overlay in the same layout; its values replace the stored value
            of the same successor or add one.
        context: int64 [C >= 1], the committed tokens; the last one is the tree's root.
        iterations, max_len, top_paths, max_nodes, c1, c2: search knobs (ADED's defaults).
        fallback_token: the one draft token when nothing is retrieved.
        seed: rollout RNG seed.
        out: optional preallocated DraftTree (the hot path).

    Returns:
        DraftTree; ``parents[:n], tokens[:n]`` with ``n = num_nodes`` feed ``build_tree``.
    """
    out = _empty_tree(max_nodes) if out is None else out
    _op("aded_draft")(*table, *online, context, iterations, max_len, top_paths, max_nodes, c1,
                      c2, fallback_token, seed, *out)
    return out


def aded_paths_to_tree(
    paths: torch.Tensor,
    path_lens: torch.Tensor,
    root_token: int,
    max_nodes: int = MAX_TREE_NODES,
    *,
    out: DraftTree | None = None,
) -> DraftTree:
    """Merges ranked token paths into one draft tree (CPU only): each path (tokens after the
    root) follows existing nodes while their tokens match and adds new nodes while fewer than
    ``max_nodes`` exist, so duplicates and shared prefixes are stored once and later paths are
    trimmed first.

    Args:
        paths: int64 [P, L], best first, each row's first ``path_lens[p]`` entries used.
        path_lens: int32 [P], each in [0, L].
        root_token: the token of node 0.
        max_nodes: 2 to 64.

    Returns:
        DraftTree in node-creation (topological) order.
    """
    out = _empty_tree(max_nodes) if out is None else out
    _op("aded_paths_to_tree")(paths, path_lens, root_token, max_nodes, *out)
    return out


# ---------------------------------------------------------------------------------------------
# fake (meta) implementations: every op only writes its outputs in place, so one no-op serves
# all of them.


def _register_fakes() -> None:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("adaeagle::")]
    for name in names:
        torch.library.register_fake(name)(lambda *args, **kwargs: None)


if extension_available():
    _register_fakes()
