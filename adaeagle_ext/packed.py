"""Weights kept in their packed GGUF blocks, for ``ops.linear`` and embedding lookups.

A model runtime holds one ``PackedWeight`` per linear layer (straight from the .gguf file, or
quantised from float weights) and calls ``pw.linear(x)``; an embedding table stays packed too and
``pw.rows(ids)`` dequantises only the rows a step needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from adaeagle_ext import ops, ref


@dataclass(frozen=True)
class PackedWeight:
    """An [N, K] weight as N packed rows of ggml blocks.

    Attributes:
        data: uint8 [N, row_bytes]: row n holds weights W[n, 0:K] in ``ggml_type`` blocks.
        ggml_type: F32 (0), F16 (1), Q4_0 (2), Q4_1 (3), Q8_0 (8) or BF16 (30).
        shape: (N, K), the logical float shape.
        act_quant: the default activation mode of ``linear``: 0 (float) or 8 (8-bit blocks;
            see ``ops.linear``).
    """

    data: torch.Tensor
    ggml_type: int
    shape: tuple[int, int]
    act_quant: int = 0

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.data.dtype != torch.uint8 or self.data.dim() != 2:
            raise ValueError(f"data must be a 2-D uint8 tensor, got {self.data.dtype} "
                             f"{tuple(self.data.shape)}")
        expected = (n, ops.ggml_row_bytes(self.ggml_type, k))
        if tuple(self.data.shape) != expected:
            raise ValueError(f"data of a {self.shape} weight of type {self.ggml_type} must have "
                             f"shape {expected}, got {tuple(self.data.shape)}")

    @classmethod
    def from_gguf_tensor(cls, tensor, *, copy: bool = True) -> PackedWeight:
        """From a ``gguf.GGUFReader`` tensor holding a 2-D weight (ne = [K, N]).

        ``copy=False`` keeps a view of the reader's read-only memory map (torch warns that it
        is not writable; the ops never write to weights).
        """
        dims = [int(d) for d in tensor.shape]
        if len(dims) != 2:
            raise ValueError(f"{tensor.name}: expected a 2-D weight, got ne={dims}")
        k, n = dims
        array = np.asarray(tensor.data)
        array = array.reshape(n, -1).view(np.uint8)
        if copy:
            array = array.copy()
        return cls(torch.from_numpy(array), int(tensor.tensor_type), (n, k))

    @classmethod
    def from_float(cls, weight: torch.Tensor, ggml_type: int) -> PackedWeight:
        """Quantise a float [N, K] weight with ``gguf.quants.quantize`` (as llama.cpp's
        converter would); F16 is a plain cast."""
        import gguf

        n, k = weight.shape
        ops.ggml_row_bytes(ggml_type, k)  # raises on an unsupported type or K
        array = weight.detach().float().cpu().numpy()
        if ggml_type == ops.GGML_F16:
            packed = array.astype(np.float16)
        else:
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType(ggml_type))
        packed = np.ascontiguousarray(packed).view(np.uint8).reshape(n, -1)
        return cls(torch.from_numpy(packed.copy()).to(weight.device), ggml_type, (n, k))

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K], bit-identical to ``gguf.quants.dequantize``."""
        return ref.dequantize(self.data, self.ggml_type)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup: float32 [*ids.shape, K] of the rows ``ids`` (int64), dequantising
        only those rows."""
        picked = self.data.index_select(0, ids.reshape(-1))
        return ref.dequantize(picked, self.ggml_type).reshape(*ids.shape, self.shape[1])

    def linear(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        out: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
        act_quant: int | None = None,
    ) -> torch.Tensor:
        """``x @ W.T + bias`` through ``ops.linear``: x [..., K] -> [..., N]; ``act_quant``
        defaults to the weight's own (see ``with_act_quant``)."""
        quant = self.act_quant if act_quant is None else act_quant
        return ops.linear(x, self.data, self.ggml_type, bias, out=out, out_dtype=out_dtype,
                          act_quant=quant)

    def with_act_quant(self, act_quant: int) -> PackedWeight:
        """The same packed data (not copied) whose ``linear`` runs with ``act_quant`` (0 or 8)
        by default."""
        if act_quant not in (0, 8):
            raise ValueError(f"act_quant must be 0 or 8, got {act_quant}")
        return dataclasses.replace(self, act_quant=act_quant)

    def to(self, device: torch.device | str) -> PackedWeight:
        return PackedWeight(self.data.to(device), self.ggml_type, self.shape, self.act_quant)

    @property
    def nbytes(self) -> int:
        """Bytes a full pass over the weight reads."""
        return self.data.numel()
