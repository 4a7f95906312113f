"""eagle_head_layer vs the same head forward run op by op (``EagleHead.forward_tree`` with the
fused op switched off: the same linear, rope_store_kv, tree_attention and rms_norm ops), with
the shipped head on the default model, one request with 300 cached draft rows and N new nodes
of a chain."""

from __future__ import annotations

import torch

from adaeagle_ext.api import load
from adaeagle_ext.drafters import eagle_head
from adaeagle_ext.models.tree_inputs import chain_inputs
from adaeagle_ext.spec.eagle_base import resolve_head
from op_cases import Case

PREFIX = 300
NODES = (1, 4)
DTYPES = (torch.float32, torch.bfloat16)


def cases(device: str) -> list[Case]:
    if device != "cpu":
        return []
    out = []
    for dtype in DTYPES:
        head = resolve_head(None, load(None, dtype=dtype, progress=False).model)
        cache = head.new_cache(1, PREFIX + 64)
        torch.manual_seed(0)
        cache.buf.normal_()
        for n in NODES:
            prefix = torch.tensor([PREFIX], dtype=torch.int32)
            positions, indptr, bits = chain_inputs(torch.tensor([n]), prefix)
            tokens = torch.randint(0, head.config.vocab_size, (n,))
            features = torch.randn(n, head.config.hidden_size).to(dtype)
            slots = (torch.zeros(n, dtype=torch.int64), PREFIX + torch.arange(n))
            call = (tokens, features, positions, cache, prefix, indptr, bits)

            @torch.inference_mode()
            def ours(call=call, slots=slots, head=head):
                head.forward_tree(*call, cache_slots=slots)

            @torch.inference_mode()
            def op_by_op(call=call, slots=slots, head=head):
                eagle_head._FUSED_HEAD = False
                try:
                    head.forward_tree(*call, cache_slots=slots)
                finally:
                    eagle_head._FUSED_HEAD = True

            name = str(dtype).removeprefix("torch.")
            out.append(Case("eagle_head_layer", f"{name} N={n} prefix={PREFIX}", ours,
                            op_by_op, "forward_tree op by op"))
    return out
