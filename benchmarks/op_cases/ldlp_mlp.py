"""ldlp_mlp vs the same layers as plain PyTorch modules (the LDLP module's forward, then
torch.round / clamp / int32), at the default model's hidden size."""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from adaeagle_ext.drafters.ldlp import LDLP
from op_cases import Case

HIDDEN = 576  # SmolLM2-135M
WIDTHS = (256, 512)
BATCHES = (1, 4)
DTYPES = (torch.float32, torch.bfloat16)
K_MAX = 8


def cases(device: str) -> list[Case]:
    out = []
    torch.manual_seed(0)
    for dtype in DTYPES:
        for width in WIDTHS:
            net = LDLP(HIDDEN, width).to(device=device, dtype=dtype).eval()
            weights = net.weights()
            for batch in BATCHES:
                emb = torch.randn(batch, HIDDEN, device=device, dtype=dtype)
                hidden = torch.randn(batch, HIDDEN, device=device, dtype=dtype)
                buffers = ops.ldlp_mlp(emb, hidden, weights, K_MAX)

                def ours(emb=emb, hidden=hidden, weights=weights, buffers=buffers):
                    ops.ldlp_mlp(emb, hidden, weights, K_MAX, out=buffers)

                @torch.inference_mode()
                def modules(net=net, emb=emb, hidden=hidden):
                    return torch.round(net(emb, hidden)).clamp(0, K_MAX).to(torch.int32)

                name = str(dtype).removeprefix("torch.")
                out.append(Case("ldlp_mlp", f"{name} W={width} H={HIDDEN} B={batch}", ours,
                                modules, "nn.Module layers"))
    return out
