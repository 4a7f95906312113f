"""The one entry point the decoder uses for attention over cached prefix + draft tree.

It runs the ``tree_attention`` op (batch-invariant: a row's result does not depend on the other
rows in the call). Head dimensions the kernel does not cover (it takes 64 and 128) fall back to a
vectorised pure-PyTorch version with the same semantics (``ref.tree_attention``, mode full),
which is not batch-invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaeagle_ext import ops

KERNEL_HEAD_DIMS = (64, 128)


def tree_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of N tree nodes over their request's cached prefix plus their tree ancestors.

    Args:
        q: [N, H, D] queries of the nodes of all requests.
        kv_cache: [L, 2, B, S_max, Hkv, D]; node i of request b has its K/V (already written)
            at row ``prefix_lens[b] + i`` of layer ``layer``.
        layer: layer index into the cache.
        prefix_lens: int32 [B].
        tree_indptr: int32 [B+1].
        mask_bits: int64 [N] ancestor bit rows (bit j: local node j is visible).
        scale: softmax scale.

    Returns:
        out [N, H, D] in q's dtype.
    """
    n, heads, dim = q.shape
    if n == 0:
        return q.new_zeros(n, heads, dim)
    if dim in KERNEL_HEAD_DIMS:
        return ops.tree_attention(q.contiguous(), kv_cache, layer, prefix_lens, tree_indptr,
                                  mask_bits, scale)
    batch = tree_indptr.numel() - 1
    indptr = tree_indptr.to(torch.int64)
    sizes = indptr[1:] - indptr[:-1]
    prefix = prefix_lens.to(torch.int64)
    active = (sizes > 0).nonzero().flatten()
    if active.numel() < batch:
        # Idle requests (size 0) are dropped from the padded problem.
        return _attend(q, kv_cache[layer], active, prefix[active], sizes[active],
                       mask_bits, scale)
    return _attend(q, kv_cache[layer], None, prefix, sizes, mask_bits, scale)


def _attend(q, kv, rows, prefix, sizes, mask_bits, scale):
    # kv: [2, B_all, S_max, Hkv, D]; rows: the requests in this call (None: all).
    n, heads, dim = q.shape
    batch = sizes.numel()
    t_max = int(sizes.max())
    s_len = int((prefix + sizes).max())
    kv = kv[:, :, :s_len] if rows is None else kv[:, :, :s_len][:, rows]
    k = kv[0].transpose(1, 2)  # [B, Hkv, S, D]
    v = kv[1].transpose(1, 2)
    req = torch.repeat_interleave(torch.arange(batch), sizes)
    local = torch.arange(n) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    if batch == 1:
        qp = q.transpose(0, 1).unsqueeze(0)  # [1, H, T, D]
    else:
        qp = q.new_zeros(batch, t_max, heads, dim)
        qp[req, local] = q
        qp = qp.transpose(1, 2)
    # Key j of request b is visible to node t when j is in its prefix or is a tree ancestor.
    key = torch.arange(s_len)
    tree_j = key[None, :] - prefix[:, None]  # [B, S]
    bits = torch.zeros(batch, t_max, dtype=torch.int64)
    bits[req, local] = mask_bits
    in_tree = (tree_j >= 0) & (tree_j < sizes[:, None])
    bit_set = (bits[:, :, None] >> tree_j.clamp(0, 63)[:, None, :]) & 1  # [B, T, S]
    visible = (tree_j[:, None, :] < 0) | (in_tree[:, None, :] & (bit_set == 1))
    visible[:, :, 0] |= ~visible.any(-1)  # padded query rows: any key, result discarded
    out = F.scaled_dot_product_attention(
        qp, k, v, attn_mask=visible[:, None], scale=scale, enable_gqa=heads != k.shape[1]
    )  # [B, H, T, D]
    if batch == 1:
        return out[0].transpose(0, 1)
    return out.transpose(1, 2)[req, local]
