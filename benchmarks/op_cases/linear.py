"""linear on packed GGUF weights vs F.linear (torch.matmul) on the dequantised weights in bf16
and fp32, over the default model's shapes (SmolLM2-135M) and decode/verify batch sizes; for
Q4_1 / Q8_0 also the 8-bit activation mode (act_quant=8) against the float-activation one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaeagle_ext import ops
from adaeagle_ext.packed import PackedWeight
from op_cases import Case

# K -> N of the default model: fused q/k/v, attention output, fused gate/up, down, LM head
SHAPES = ((576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152))
ROWS = (1, 2, 4, 8, 16, 32, 64)
TYPES = {"Q4_1": ops.GGML_Q4_1, "Q8_0": ops.GGML_Q8_0, "BF16": ops.GGML_BF16,
         "F32": ops.GGML_F32}


def cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for k, n in SHAPES:
        dense = torch.randn(n, k, generator=gen) * 0.05
        packs = {name: PackedWeight.from_float(dense, t).to(device) for name, t in TYPES.items()}
        # baselines use the very weights the packed ones hold
        floats = {name: pw.dequantize().to(device) for name, pw in packs.items()}
        halves = {name: w.bfloat16() for name, w in floats.items()}
        for m in ROWS:
            x = torch.randn(m, k, generator=gen).to(device)
            for name, pw in packs.items():
                w32, w16, x16 = floats[name], halves[name], x.bfloat16()
                y = torch.empty(m, n, device=device)

                def ours(x=x, pw=pw, y=y):
                    pw.linear(x, out=y)

                shape = f"{name} {k}->{n} M={m}"
                out.append(Case("linear", shape, ours, lambda x=x16, w=w16: F.linear(x, w),
                                "F.linear bf16"))
                out.append(Case("linear", shape, ours, lambda x=x, w=w32: F.linear(x, w),
                                "F.linear fp32"))
                if pw.ggml_type in (ops.GGML_Q4_1, ops.GGML_Q8_0):
                    # the 8-bit activation mode against the float-activation one
                    def q8(x=x, pw=pw, y=y):
                        pw.linear(x, out=y, act_quant=8)

                    out.append(Case("linear", f"{shape} act_quant=8", q8, ours,
                                    "linear act_quant=0"))
    return out
