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

from adaeagle_ext.ref import (  # noqa: E402, F401  (the ggml type numbers)
    GGML_BF16,
    GGML_BLOCKS,
    GGML_F16,
    GGML_F32,
    GGML_Q4_0,
    GGML_Q4_1,
    GGML_Q8_0,
)


def ggml_row_bytes(ggml_type: int, k: int) -> int:
    """Bytes of one packed row of K weights of ``ggml_type`` (K a multiple of its block)."""
    if ggml_type not in GGML_BLOCKS:
        raise ValueError(f"ggml type {ggml_type} is not supported by linear; supported: "
                         f"{sorted(GGML_BLOCKS)}")
    block, nbytes = GGML_BLOCKS[ggml_type]
    if k % block:
        raise ValueError(f"K={k} is not a multiple of {block}, the block size of type {ggml_type}")
    return k // block * nbytes


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` with W kept in its packed GGUF blocks, batch-invariant.

    Every output element is summed in one fixed order (8 fp32 lanes over k, fused
    multiply-adds, a fixed lane tree; see ``csrc/cpu/linear.h``) whatever the number of rows,
    the other rows or the thread count, so a row computed alone is bit-identical to the same
    row inside any batch. Weights are dequantised in registers exactly as
    ``gguf.quants.dequantize`` does; accumulation is fp32.

    Args:
        x: [..., K] float32 or bfloat16.
        weight: uint8 [N, row_bytes], row n = output n's K weights in ggml blocks of
            ``ggml_type``: F32 (0), F16 (1), Q4_0 (2), Q4_1 (3), Q8_0 (8) or BF16 (30);
            K must be a multiple of the block size (32 for the Q types).
        ggml_type: the ggml type number (``gguf.GGMLQuantizationType``).
        bias: optional float32 [N], added last.
        out: optional [..., N] output (float32 or x's dtype) written in place (the hot path).
        out_dtype: dtype of the allocated output when ``out`` is None: x's dtype by default,
            or torch.float32 (the fp32 sum, unrounded).

    Returns:
        y [..., N]: the fp32 sum, rounded once to the output dtype.

    The CPU kernel is chosen at each call: AVX2+FMA+F16C when the CPU has them, else a
    portable loop with the same order; ``ADAEAGLE_LINEAR_ISA=scalar`` forces the latter.
    """
    k = x.shape[-1]
    n = weight.shape[0]
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(*x.shape[:-1], n, dtype=out_dtype or x.dtype, device=x.device)
    elif out.shape != (*x.shape[:-1], n):
        raise ValueError(f"linear: out must have shape {(*x.shape[:-1], n)}, got "
                         f"{tuple(out.shape)}")
    _op("linear")(x2, weight, ggml_type, bias, out.view(x2.shape[0], n))
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
