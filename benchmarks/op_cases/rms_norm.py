"""rms_norm vs the same formula in PyTorch ops (``ref.rms_norm``, what the model ran before),
at the default model's hidden size."""

from __future__ import annotations

import torch

from adaeagle_ext import ops, ref
from op_cases import Case

HIDDEN = 576  # SmolLM2-135M
ROWS = (1, 8, 64)
DTYPES = (torch.float32, torch.bfloat16)
EPS = 1e-5


def cases(device: str) -> list[Case]:
    out = []
    torch.manual_seed(0)
    for dtype in DTYPES:
        weight = (torch.randn(HIDDEN) * 0.5 + 1).to(device=device, dtype=dtype)
        for rows in ROWS:
            x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
            y = torch.empty_like(x)

            def ours(x=x, weight=weight, y=y):
                ops.rms_norm(x, weight, EPS, out=y)

            @torch.inference_mode()
            def torch_ops(x=x, weight=weight):
                return ref.rms_norm(x, weight, EPS)

            name = str(dtype).removeprefix("torch.")
            out.append(Case("rms_norm", f"{name} N={rows} H={HIDDEN}", ours, torch_ops,
                            "PyTorch ops (HF RMSNorm)"))
    return out
