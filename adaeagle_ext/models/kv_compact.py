"""In-place KV compaction of the runtime's cache through ``ops.kv_compact``."""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from adaeagle_ext.models.kv_cache import KVCache


def kv_compact_(cache: KVCache, accept_local: torch.Tensor, accept_len: torch.Tensor,
                prefix_lens: torch.Tensor, active: torch.Tensor | None = None) -> None:
    """Move each request's accepted path to consecutive rows, for all layers; set ``cache.lens``.

    Args:
        cache: KVCache (buf [L, 2, B, S_max, Hkv, D]); the tree of request b sits at rows
            ``prefix_lens[b] + local id``.
        accept_local: int32 [B, P], accepted path as local ids (root 0 first), -1 padded.
        accept_len: int32 [B], accepted drafts (``accept_len + 1`` rows are kept).
        prefix_lens: int32 [B].
        active: bool [B] or None; idle requests (False) keep their rows and length.

    After the call ``cache.lens == prefix_lens + accept_len + 1`` for active requests.
    """
    idle = None if active is None or bool(active.all()) else ~active
    idle_lens = prefix_lens[idle] if idle is not None else None
    if idle is not None:
        # An idle request's path is just its root: nothing moves.
        accept_local = accept_local.masked_fill(idle[:, None], -1)
        accept_local[:, 0] = 0
        accept_len = accept_len.masked_fill(idle, 0)
        prefix_lens = prefix_lens.clamp(max=cache.max_seq_len - 1)
    ops.kv_compact(cache.buf, accept_local, accept_len, prefix_lens, out=cache.lens)
    if idle is not None:
        cache.lens[idle] = idle_lens
