"""decoder_layers vs the same 30 layers run as the model's Python modules (each calling the same
ops: rms_norm, linear, rope_store_kv, tree_attention), on the default model's own Q4_1 / Q8_0
weights, one request with 300 cached tokens and a chain of N new ones."""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from adaeagle_ext.api import load
from adaeagle_ext.models import llama
from adaeagle_ext.models.tree_inputs import chain_inputs
from op_cases import Case

PREFIX = 300
TOKENS = (1, 2, 3, 4, 8)
DTYPES = (torch.float32, torch.bfloat16)


def cases(device: str) -> list[Case]:
    if device != "cpu":
        return []
    out = []
    for dtype in DTYPES:
        model = load(None, dtype=dtype, progress=False).model
        c = model.config
        cache = model.new_cache(1, PREFIX + 64)
        torch.manual_seed(0)
        cache.buf.normal_()
        for n in TOKENS:
            prefix = torch.tensor([PREFIX], dtype=torch.int32)
            positions, indptr, bits = chain_inputs(torch.tensor([n]), prefix)
            req = torch.zeros(n, dtype=torch.int64)
            rows = PREFIX + torch.arange(n)
            cos, sin = llama.rope_cos_sin(positions, model.inv_freq, dtype)
            x0 = model.model.embed_tokens(torch.randint(0, c.vocab_size, (n,)))
            args = model._decoder_layers_args(x0, cache.buf)
            batch = llama._Batch(cache, prefix, indptr, bits, req)

            @torch.inference_mode()
            def ours(x0=x0, args=args, cos=cos, sin=sin, req=req, rows=rows, prefix=prefix,
                     indptr=indptr, bits=bits, n=n, buf=cache.buf, c=c):
                ops.decoder_layers(x0.clone(), *args, cos.view(n, -1), sin.view(n, -1),
                                   buf, req, rows, prefix, indptr, bits, c.num_heads,
                                   c.num_kv_heads, c.rms_norm_eps, c.head_dim ** -0.5)

            @torch.inference_mode()
            def modules(x0=x0, cos=cos, sin=sin, rows=rows, batch=batch, model=model):
                x = x0.clone()
                for layer in model.model.layers:
                    x = layer(x, cos, sin, rows, batch)

            name = str(dtype).removeprefix("torch.")
            out.append(Case("decoder_layers", f"{name} N={n} prefix={PREFIX} 30 layers", ours,
                            modules, "the model's per-layer modules"))
    return out
