"""tree_attention vs SDPA with a boolean mask built per call; merge_attn_states vs the torch
formula. The default model's heads (SmolLM2-135M: H=9, Hkv=3, D=64), B=1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaeagle_ext import ops
from op_cases import Case

HEADS, KV_HEADS, DIM = 9, 3, 64
PREFIXES = (512, 2048)
TREE_SIZES = (1, 8, 26, 60)
DTYPES = (torch.float32, torch.bfloat16)
LAYERS = 2


def bushy_parents(size: int, gen: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(max(0, i - 4), i, (), generator=gen)) for i in range(1, size)]


def sdpa_with_mask(q, kv_cache, layer, prefix, mask_bits, scale):
    """What a runtime without the op does: expand the bit rows into a [T, prefix + T] boolean
    mask, then SDPA over the layer's cache rows (GQA by enable_gqa)."""
    size = q.shape[0]
    keys = prefix + size
    k = kv_cache[layer, 0, 0, :keys].transpose(0, 1).unsqueeze(0)  # [1, Hkv, S, D]
    v = kv_cache[layer, 1, 0, :keys].transpose(0, 1).unsqueeze(0)
    local = torch.arange(size, device=q.device)
    tree = ((mask_bits[:, None] >> local) & 1).bool()
    mask = torch.cat([torch.ones(size, prefix, dtype=torch.bool, device=q.device), tree], dim=1)
    return F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k, v, attn_mask=mask, scale=scale, enable_gqa=True,
    )


def attention_cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    scale = DIM ** -0.5
    for dtype in DTYPES:
        for prefix in PREFIXES:
            for size in TREE_SIZES:
                parents = torch.tensor(bushy_parents(size, gen), dtype=torch.int32, device=device)
                indptr = torch.tensor([0, size], dtype=torch.int32, device=device)
                prefix_lens = torch.tensor([prefix], dtype=torch.int32, device=device)
                mask_bits = ops.build_tree(parents, indptr, prefix_lens, 63, 64).mask_bits
                cache = torch.randn(LAYERS, 2, 1, prefix + 64, KV_HEADS, DIM, generator=gen)
                cache = cache.to(device=device, dtype=dtype)
                q = torch.randn(size, HEADS, DIM, generator=gen).to(device=device, dtype=dtype)
                out_buf = torch.empty_like(q)

                def ours(q=q, cache=cache, prefix_lens=prefix_lens, indptr=indptr,
                         mask_bits=mask_bits, out_buf=out_buf):
                    ops.tree_attention(q, cache, 1, prefix_lens, indptr, mask_bits, scale,
                                       out=out_buf)

                def baseline(q=q, cache=cache, prefix=prefix, mask_bits=mask_bits):
                    sdpa_with_mask(q, cache, 1, prefix, mask_bits, scale)

                name = f"{str(dtype)[6:]} prefix={prefix} T={size}"
                out.append(Case("tree_attention", name, ours, baseline, "SDPA + bool mask"))
    return out


def merge_formula(out_a, lse_a, out_b, lse_b):
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    wa = torch.exp(lse_a - safe).nan_to_num(0.0)[..., None]
    wb = torch.exp(lse_b - safe).nan_to_num(0.0)[..., None]
    return (wa * out_a.float() + wb * out_b.float()).to(out_a.dtype), lse


def merge_cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for tokens in (8, 60):
        out_a = torch.randn(tokens, HEADS, DIM, generator=gen).to(device)
        out_b = torch.randn(tokens, HEADS, DIM, generator=gen).to(device)
        lse_a = torch.randn(tokens, HEADS, generator=gen).to(device)
        lse_b = torch.randn(tokens, HEADS, generator=gen).to(device)
        buf, lse_buf = torch.empty_like(out_a), torch.empty_like(lse_a)

        def ours(a=out_a, la=lse_a, b=out_b, lb=lse_b, buf=buf, lse_buf=lse_buf):
            ops.merge_attn_states(a, la, b, lb, out=buf, lse=lse_buf)

        out.append(Case("merge_attn_states", f"float32 N={tokens}", ours,
                        lambda a=out_a, la=lse_a, b=out_b, lb=lse_b: merge_formula(a, la, b, lb),
                        "torch formula"))
    return out


def cases(device: str) -> list[Case]:
    return attention_cases(device) + merge_cases(device)
