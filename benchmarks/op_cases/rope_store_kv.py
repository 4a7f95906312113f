"""rope_store_kv vs the PyTorch code it replaces in the model's attention (``ref.rope_store_kv``:
slices, mul, add, neg, cat and two index_put_), at the default model's shapes."""

from __future__ import annotations

import torch

from adaeagle_ext import ops, ref
from op_cases import Case

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
LAYERS, BATCH, S_MAX = 30, 1, 1024
TOKENS = (1, 8, 64)
DTYPES = (torch.float32, torch.bfloat16)
LAYER = 12
FIRST_ROW = 300


def cases(device: str) -> list[Case]:
    out = []
    torch.manual_seed(0)
    for dtype in DTYPES:
        cache = torch.zeros(LAYERS, 2, BATCH, S_MAX, KV_HEADS, HEAD_DIM, device=device,
                            dtype=dtype)
        for n in TOKENS:
            qkv = torch.randn(n, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=device, dtype=dtype)
            angle = torch.rand(n, 1, HEAD_DIM, device=device) * 300
            cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
            req = torch.zeros(n, dtype=torch.int64, device=device)
            rows = torch.arange(FIRST_ROW, FIRST_ROW + n, device=device)
            q_out = torch.empty(n, HEADS, HEAD_DIM, device=device, dtype=dtype)

            def ours(qkv=qkv, cos=cos, sin=sin, cache=cache, req=req, rows=rows, q_out=q_out):
                ops.rope_store_kv(qkv, cos, sin, cache, LAYER, req, rows, HEADS, KV_HEADS,
                                  q_out=q_out)

            @torch.inference_mode()
            def torch_ops(qkv=qkv, cos=cos, sin=sin, cache=cache, req=req, rows=rows):
                return ref.rope_store_kv(qkv, cos, sin, cache, LAYER, req, rows, HEADS,
                                         KV_HEADS)

            name = str(dtype).removeprefix("torch.")
            out.append(Case("rope_store_kv", f"{name} N={n} H={HEADS}/{KV_HEADS} D={HEAD_DIM}",
                            ours, torch_ops, "PyTorch ops (RoPE + index_put_)"))
    return out
