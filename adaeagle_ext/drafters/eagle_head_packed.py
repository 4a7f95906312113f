"""Packed inference copy of an EAGLE head's layer weights, run by ``ops.linear``.

The head trains on fp32 ``nn.Parameter``s (autograd, ``F.linear``); drafting only needs their
values, in one of two layer formats:

- ``"q8_0"`` (the default): GGUF Q8_0 blocks, half the bytes of BF16. Drafting runs between
  target passes that stream ~100 MB of weights through the caches, so the head's weights come
  from DRAM each step and Q8_0 makes a head forward about a third cheaper there; τ is unchanged
  (the eagle_head.md card has the measurement). Needs every input width to be a multiple of 32;
  other heads get the exact format.
- ``"exact"``: ``pack_exact`` stores a weight as BF16 blocks when every value is a bfloat16
  number (the shipped head is saved in bf16, so nothing is lost), else as F32: the same weights
  as the parameters, only summed in ``ops.linear``'s fixed order.

Either is faster than ``F.linear`` for the few rows a draft level has on the 2-core CPU, above
all for M > 1, where PyTorch's fp32 path is slow (see ``benchmarks/bench_draft_step.py``).
Drafts are proposals: verification keeps the output exact whatever the format.

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


LAYER_FORMATS = ("q8_0", "exact")
DEFAULT_LAYER_FORMAT = "q8_0"


def pack_layer_weight(weight: torch.Tensor, layer_format: str) -> PackedWeight:
    """[N, K] float weight -> PackedWeight in ``layer_format`` ("q8_0" needs K % 32 == 0)."""
    if layer_format not in LAYER_FORMATS:
        raise ValueError(f"layer_format must be one of {LAYER_FORMATS}, got {layer_format!r}")
    if layer_format == "q8_0":
        return PackedWeight.from_float(weight.detach().float(), ops.GGML_Q8_0)
    return pack_exact(weight)


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
    def from_head(cls, head, layer_format: str = DEFAULT_LAYER_FORMAT) -> PackedHeadLayers:
        """Pack ``head``'s current parameter values (an ``EagleHead``) in ``layer_format``."""
        a, mlp = head.self_attn, head.mlp
        projs = (a.q_proj, a.k_proj, a.v_proj)
        widths = (head.fc.in_features, a.q_proj.in_features, a.o_proj.in_features,
                  mlp.down_proj.in_features)
        if layer_format == "q8_0" and any(k % 32 for k in widths):
            layer_format = "exact"  # Q8_0 blocks hold 32 inputs

        def pack(w):
            return pack_layer_weight(w, layer_format)

        return cls(
            fc=pack(head.fc.weight), fc_bias=_bias(head.fc),
            qkv=pack(torch.cat([p.weight for p in projs])), qkv_bias=_bias(*projs),
            o=pack(a.o_proj.weight), o_bias=_bias(a.o_proj),
            gate_up=pack(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
            down=pack(mlp.down_proj.weight))

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
