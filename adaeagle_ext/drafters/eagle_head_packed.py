"""Packed inference copy of an EAGLE head's layer weights, run by ``ops.linear``.

The head trains on fp32 ``nn.Parameter``s (autograd, ``F.linear``); drafting only needs their
values. ``pack_exact`` stores a weight as BF16 blocks when every value is a bfloat16 number
(the shipped head is saved in bf16, so nothing is lost), else as F32: the packed copy holds the
same weights as the parameters, only summed in ``ops.linear``'s fixed order. On the 2-core CPU
that is faster than ``F.linear`` for the few rows a draft level has, above all for M > 1,
where PyTorch's fp32 path is slow (see ``benchmarks/bench_draft_step.py``).

q/k/v and gate/up are concatenated into one weight each: ``ops.linear`` computes every output
element on its own, so one call over the stacked rows gives the same bits as separate calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from adaeagle_ext import ops
from adaeagle_ext.packed import PackedWeight


def pack_exact(weight: torch.Tensor) -> PackedWeight:
    """[N, K] float weight -> PackedWeight holding exactly its values: BF16 when they are all
    bfloat16 numbers (or the tensor is bf16), else F32."""
    w = weight.detach()
    if w.dtype == torch.bfloat16 or torch.equal(w, w.to(torch.bfloat16).to(w.dtype)):
        return PackedWeight.from_float(w.to(torch.bfloat16).float(), ops.GGML_BF16)
    return PackedWeight.from_float(w.float(), ops.GGML_F32)


def _bias(*layers: torch.nn.Linear) -> torch.Tensor | None:
    """float32 concatenation of the layers' biases (zeros for a missing one), or None when
    none has a bias."""
    if all(layer.bias is None for layer in layers):
        return None
    return torch.cat([torch.zeros(layer.out_features) if layer.bias is None
                      else layer.bias.detach().float() for layer in layers])


@dataclass(frozen=True)
class PackedHeadLayers:
    """The head's linear layers packed for inference (biases float32 or None)."""

    fc: PackedWeight
    fc_bias: torch.Tensor | None
    qkv: PackedWeight  # rows: q (heads * D), k (kv_heads * D), v (kv_heads * D)
    qkv_bias: torch.Tensor | None
    o: PackedWeight
    o_bias: torch.Tensor | None
    gate_up: PackedWeight  # rows: gate (I), up (I)
    down: PackedWeight

    @classmethod
    def from_head(cls, head) -> PackedHeadLayers:
        """Pack ``head``'s current parameter values (an ``EagleHead``)."""
        a, mlp = head.self_attn, head.mlp
        projs = (a.q_proj, a.k_proj, a.v_proj)
        return cls(
            fc=pack_exact(head.fc.weight), fc_bias=_bias(head.fc),
            qkv=pack_exact(torch.cat([p.weight for p in projs])), qkv_bias=_bias(*projs),
            o=pack_exact(a.o_proj.weight), o_bias=_bias(a.o_proj),
            gate_up=pack_exact(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
            down=pack_exact(mlp.down_proj.weight))

    @cached_property
    def op_args(self) -> tuple[list[torch.Tensor], list[int], list[int], list]:
        """(weights, ggml_types, act_quants, biases) as ``ops.eagle_head_layer`` takes them."""
        ws = (self.fc, self.qkv, self.o, self.gate_up, self.down)
        return ([w.data for w in ws], [w.ggml_type for w in ws], [w.act_quant for w in ws],
                [self.fc_bias, self.qkv_bias, self.o_bias])

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU MLP of rows x [M, hidden]."""
        gate_up = self.gate_up.linear(x)
        inter = gate_up.shape[-1] // 2
        return self.down.linear(F.silu(gate_up[:, :inter]) * gate_up[:, inter:])


def slice_rows(weight: PackedWeight, rows: torch.Tensor | None) -> PackedWeight:
    """The packed rows ``rows`` (int64 [Nd], None: all) of ``weight``, as their own weight."""
    if rows is None:
        return weight
    data = weight.data.index_select(0, rows.to(weight.data.device))
    return PackedWeight(data, weight.ggml_type, (int(rows.numel()), weight.shape[1]))
