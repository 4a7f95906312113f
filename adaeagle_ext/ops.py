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

from adaeagle_ext import ref as _ref
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

ATTN_FULL = _ref.ATTN_FULL  # prefix + tree
ATTN_PREFIX_ONLY = _ref.ATTN_PREFIX_ONLY  # cached prefix only
ATTN_TREE_ONLY = _ref.ATTN_TREE_ONLY  # tree part only, masked by the bit rows


def tree_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    scale: float | None = None,
    mode: int = ATTN_FULL,
    *,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    validate: bool = False,
    use_flash_attn: bool | None = None,
):
    """Attention of the tree tokens of a ragged batch over their cached prefix and tree ancestors.

    Node i of request b attends to cache rows ``[0, prefix_lens[b])`` (the prefix) and to row
    ``prefix_lens[b] + j`` for every local node j whose bit is set in ``mask_bits[i]`` (itself
    and its ancestors); a chain is the causal special case. The tree's K/V must already be in
    the cache at rows ``prefix_lens[b] + local id``.

    Args:
        q: [N, H, D] float32 / bfloat16 (/ float16), D 64 or 128, H a multiple of Hkv.
        kv_cache: [L, 2, B_cache, S_max, Hkv, D], q's dtype; request b uses slot b (B <= B_cache).
        layer: the layer of the cache to read.
        prefix_lens: int32 [B], cached rows before each root.
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``, at most 64.
        mask_bits: int64 [N], ancestor bit rows from ``build_tree``.
        scale: softmax scale, default ``D ** -0.5``.
        mode: ATTN_FULL, ATTN_PREFIX_ONLY or ATTN_TREE_ONLY.
        return_lse: also return the log-sum-exp.
        out: optional [N, H, D] output in q's dtype; lse: optional float32 [N, H] (implies
            return_lse).
        validate: on CUDA, check ``prefix_lens + T <= S_max`` and ``T <= 64`` on the host first
            (one sync); the CUDA kernel writes NaN for such requests. The CPU kernel always
            checks and raises.
        use_flash_attn: CUDA, ATTN_FULL, fp16/bf16 only: compute the prefix part with
            ``flash_attn.flash_attn_with_kvcache`` and merge it with a tree-only pass. None
            (default) uses it when flash_attn is importable; False never does.

    Returns:
        out [N, H, D] (zeros for a row that sees no key), or (out, lse) with lse float32 [N, H]
        the natural-log softmax denominator (-inf for a row that sees no key).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    want_lse = return_lse or lse is not None
    if out is None:
        out = torch.empty_like(q)
    if lse is None and want_lse:
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    if validate and q.device.type != "cpu":
        _validate_tree_batch(q.shape[0], kv_cache.shape[3], prefix_lens, tree_indptr)
    if _flash_attn_applies(use_flash_attn, q, mode):
        if lse is None:
            lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
        _tree_attention_flash(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale,
                              out, lse)
    else:
        _op("tree_attention")(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits,
                              float(scale), int(mode), out, lse)
    return (out, lse) if want_lse else out


def merge_attn_states(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
):
    """Combine two partial attentions over disjoint key sets by their log-sum-exp.

    ``out = wa * out_a + wb * out_b`` with ``wa = exp(lse_a - lse)``, ``wb = exp(lse_b - lse)``
    and ``lse = logaddexp(lse_a, lse_b)``. A side with LSE -inf (no key) is ignored, whatever
    its output holds: one empty side copies the other, both empty give 0 and -inf.

    Args:
        out_a, out_b: [N, H, D] float32 / bfloat16 / float16, one dtype.
        lse_a, lse_b: float32 [N, H], natural log (flash-attn's [B, H, S] must be permuted).
        out: optional [N, H, D] output; may be ``out_a`` or ``out_b`` itself (in place).
        lse: optional float32 [N, H] output; may be ``lse_a`` or ``lse_b`` itself.

    Returns:
        (out, lse).
    """
    if out is None:
        out = torch.empty_like(out_a)
    if lse is None:
        lse = torch.empty_like(lse_a)
    _op("merge_attn_states")(out_a, lse_a, out_b, lse_b, out, lse)
    return out, lse


def _validate_tree_batch(num_nodes: int, s_max: int, prefix_lens: torch.Tensor,
                         tree_indptr: torch.Tensor) -> None:
    """Host-side version of the CPU kernel's data checks (one sync), for CUDA inputs."""
    indptr = tree_indptr.cpu().tolist()
    prefix = prefix_lens.cpu().tolist()
    if indptr[0] != 0 or indptr[-1] != num_nodes:
        raise RuntimeError(f"tree_attention: tree_indptr must run from 0 to q.size(0)="
                           f"{num_nodes}, got {indptr[0]} .. {indptr[-1]}")
    for b, plen in enumerate(prefix):
        size = indptr[b + 1] - indptr[b]
        if not 0 <= size <= MAX_TREE_NODES:
            raise RuntimeError(f"tree_attention: request {b} has {size} tree tokens, expected "
                               f"0 to {MAX_TREE_NODES}")
        if plen < 0 or plen + size > s_max:
            raise RuntimeError(f"tree_attention: request {b}: prefix_lens + tree tokens = "
                               f"{plen} + {size} exceeds the cache length S_max={s_max}")


def _flash_attn_applies(use_flash_attn: bool | None, q: torch.Tensor, mode: int) -> bool:
    if use_flash_attn is False or q.device.type != "cuda" or mode != ATTN_FULL:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        if use_flash_attn:
            raise
        return False
    return True


def _tree_attention_flash(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale, out,
                          lse):
    """Prefix part by flash_attn_with_kvcache, tree part by our kernel, merged by LSE.

    Untested here (no GPU). Requests are padded to T_pad = min(N, 64) queries, so no host sync
    is needed: node n of request b goes to slot (b, n - indptr[b]).
    """
    from flash_attn import flash_attn_with_kvcache

    n, heads, dim = q.shape
    batch = tree_indptr.numel() - 1
    t_pad = min(n, MAX_TREE_NODES)
    nodes = torch.arange(n, device=q.device, dtype=torch.int32)
    req = torch.searchsorted(tree_indptr[1:], nodes, right=True).long()
    local = (nodes - tree_indptr[req]).long().clamp_(max=t_pad - 1)
    q_pad = q.new_zeros(batch, t_pad, heads, dim)
    q_pad[req, local] = q
    prefix_out, prefix_lse = flash_attn_with_kvcache(
        q_pad, kv_cache[layer, 0, :batch], kv_cache[layer, 1, :batch],
        cache_seqlens=prefix_lens, softmax_scale=scale, causal=False, return_softmax_lse=True,
    )
    prefix_out = prefix_out[req, local]  # [N, H, D]
    prefix_lse = prefix_lse[req, :, local].float()  # FA's [B, H, S] -> [N, H]
    # FA marks a row without keys (prefix 0) with +inf; ours is -inf.
    prefix_lse = torch.where(torch.isinf(prefix_lse), float("-inf"), prefix_lse)
    tree_out, tree_lse = tree_attention(
        q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale, ATTN_TREE_ONLY,
        return_lse=True, use_flash_attn=False,
    )
    merge_attn_states(prefix_out, prefix_lse, tree_out, tree_lse, out=out, lse=lse)


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
