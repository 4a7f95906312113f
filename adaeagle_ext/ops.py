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
# fake (meta) implementations: every op only writes its outputs in place, so one no-op serves
# all of them.


def _register_fakes() -> None:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("adaeagle::")]
    for name in names:
        torch.library.register_fake(name)(lambda *args, **kwargs: None)


if extension_available():
    _register_fakes()
