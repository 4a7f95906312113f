"""Linear and embedding layers that keep their weights in packed GGUF blocks (``ops.linear``).

On CPU a decode step is bound by reading weights, so keeping the file's own 4.5-bit (Q4_1) or
8.5-bit (Q8_0) blocks and dequantising in registers is both the fast path and the exact numbers
of the original model. ``ops.linear`` reduces every output in one fixed order, so a row's result
does not depend on the other rows in the call (batch invariance).

``set_act_quant(model, 8)`` switches every packed layer (the LM head included) to 8-bit
activation blocks with integer dot products (``ops.linear(act_quant=8)``): faster on CPU,
still batch-invariant, but no longer the float numbers of the original model. Off by default.
"""

from __future__ import annotations

import torch
from torch import nn

from adaeagle_ext import ops
from adaeagle_ext.packed import PackedWeight

_epoch = 0


def packing_epoch() -> int:
    """A counter that grows whenever an attribute of a ``WatchedModule`` is set: caches built
    from such modules' attributes (``LlamaForCausalLM``'s fused-layer arguments) compare it
    to know they are still current."""
    return _epoch


def tensor_version(t: torch.Tensor) -> int:
    """t's in-place version counter (-1 for inference tensors, which have none): caches of
    values computed from t compare it to see in-place changes."""
    try:
        return t._version
    except RuntimeError:
        return -1


class WatchedModule(nn.Module):
    """An nn.Module whose attribute assignments (``layer.weight_packed = ...``,
    ``set_act_quant``, a replaced parameter) advance ``packing_epoch()``."""

    def __setattr__(self, name: str, value) -> None:
        global _epoch
        _epoch += 1
        super().__setattr__(name, value)


class PackedLinear(WatchedModule):
    """``y = x @ W.T + b`` with W packed; x [..., K] fp32/bf16 -> y [..., N] in x's dtype."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight_packed = weight
        self.register_buffer("bias", None if bias is None else bias.float(), persistent=False)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_packed.linear(x, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """float32 [N, K] (dequantised on every call)."""
        return self.weight_packed.dequantize()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"ggml_type={self.weight_packed.ggml_type}, bias={self.bias is not None}")


class PackedEmbedding(WatchedModule):
    """Embedding lookup that dequantises only the looked-up rows: ids [...] -> [..., H].

    A decode step looks up a few ids, and dequantising them costs a dozen PyTorch ops (about
    0.07 ms, most of it fixed). So lookups of at most ``CACHED_LOOKUP`` ids on CPU keep each
    row they dequantise, in the module's dtype, up to ``CACHE_BYTES``; a row comes from the
    cache with the same bits. The cache follows ``weight_packed`` (a replaced weight, an
    in-place change of its data) and ``dtype``; outputs are always fresh tensors.
    """

    CACHED_LOOKUP = 64
    CACHE_BYTES = 32 << 20

    def __init__(self, weight: PackedWeight, dtype: torch.dtype):
        super().__init__()
        self.weight_packed = weight
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight_packed
        if ids.numel() == 0 or ids.numel() > self.CACHED_LOOKUP or ids.device.type != "cpu" \
                or w.data.device.type != "cpu":
            return w.rows(ids).to(self.dtype)
        cache, room = self._row_cache()
        flat = ids.reshape(-1).tolist()
        missing = [t for t in dict.fromkeys(flat) if t not in cache]
        fresh = {}
        if missing:  # one dequantisation for all of them; raises for a bad id
            rows = w.rows(torch.tensor(missing)).to(self.dtype)
            fresh = dict(zip(missing, rows, strict=True))
            for t in missing[:max(0, room - len(cache))]:
                cache[t] = fresh[t]
        return torch.stack([cache[t] if t in cache else fresh[t] for t in flat]).reshape(
            *ids.shape, self.embedding_dim)

    def _row_cache(self) -> tuple[dict[int, torch.Tensor], int]:
        """(id -> dequantised row, most rows kept) for the current weight and dtype; kept in
        ``__dict__`` so that filling it does not advance ``packing_epoch()``."""
        w = self.weight_packed
        key = (w.data.data_ptr(), tensor_version(w.data), self.dtype)
        entry = self.__dict__.get("_rows")
        if entry is None or entry[0] != key or entry[1] is not w:
            row_bytes = self.embedding_dim * torch.empty((), dtype=self.dtype).element_size()
            entry = (key, w, {}, max(1, self.CACHE_BYTES // row_bytes))
            self.__dict__["_rows"] = entry
        return entry[2], entry[3]

    def dense_weight(self) -> torch.Tensor:
        return self.weight_packed.dequantize()


def packable(ggml_type: int, shape: tuple[int, ...]) -> bool:
    """Whether ``ops.linear`` can run a weight of this type and shape as stored."""
    if len(shape) != 2 or int(ggml_type) not in ops.GGML_BLOCKS:
        return False
    return shape[1] % ops.GGML_BLOCKS[int(ggml_type)][0] == 0


def set_act_quant(model: nn.Module, act_quant: int) -> int:
    """Run every packed linear layer and packed LM head of ``model`` with ``act_quant`` (0:
    float activations, 8: 8-bit activation blocks; see ``ops.linear``), the fused q/k/v and
    gate/up weights included. The packed data is shared, not copied. Returns the number of
    packed weights switched."""
    switched = 0
    for module in model.modules():
        # Every PackedWeight attribute: the layers' own and the fused q/k/v and gate/up rows.
        for name, value in list(vars(module).items()):
            if isinstance(value, PackedWeight):
                setattr(module, name, value.with_act_quant(act_quant))
                switched += 1
    return switched
