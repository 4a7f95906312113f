"""Static KV cache: one contiguous buffer ``[L, 2, B, S_max, Hkv, D]`` plus per-request lengths."""

from __future__ import annotations

import torch

from adaeagle_ext.models.config import LlamaConfig


class KVCache:
    """The K/V of every layer in one buffer, so ``kv_compact`` moves all layers in one call.

    Attributes:
        buf: [L, 2, B, S_max, Hkv, D]; ``buf[l, 0]`` are layer l's keys, ``buf[l, 1]`` values.
        lens: int32 [B], committed rows of each request (rows past it are scratch).
    """

    def __init__(self, config: LlamaConfig, batch: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        self.buf = torch.zeros(
            config.num_layers, 2, batch, max_seq_len, config.num_kv_heads, config.head_dim,
            dtype=dtype, device=device,
        )
        self.lens = torch.zeros(batch, dtype=torch.int32, device=device)

    @property
    def batch(self) -> int:
        return self.buf.shape[2]

    @property
    def max_seq_len(self) -> int:
        return self.buf.shape[3]

    def reset(self) -> None:
        self.lens.zero_()
