"""In-place KV compaction with the semantics of ``ref.kv_compact`` (``ops.kv_compact`` later)."""

from __future__ import annotations

import torch

from adaeagle_ext.models.kv_cache import KVCache


def kv_compact_(cache: KVCache, accept_local: torch.Tensor, accept_len: torch.Tensor,
                prefix_lens: torch.Tensor) -> None:
    """Move each request's accepted path to consecutive rows, for all layers; set ``cache.lens``.

    Args:
        cache: KVCache (buf [L, 2, B, S_max, Hkv, D]); the tree of request b sits at rows
            ``prefix_lens[b] + local id``.
        accept_local: int32 [B, P], accepted path as local ids (root 0 first), -1 padded.
        accept_len: int32 [B], accepted drafts (``accept_len + 1`` rows are kept).
        prefix_lens: int32 [B].

    After the call ``cache.lens == prefix_lens + accept_len + 1``.
    """
    keep = (accept_len.to(torch.int64) + 1).tolist()
    paths = accept_local.tolist()
    base = prefix_lens.tolist()
    for b, k in enumerate(keep):
        path = paths[b][:k]
        if any(i < 0 for i in path):
            raise ValueError(f"accept_local[{b}] has fewer than accept_len+1 = {k} nodes")
        if path == list(range(k)):
            continue  # already in place (every chain, and AR)
        src = torch.tensor(path, dtype=torch.int64) + base[b]
        # Gather first: a later destination can be an earlier source.
        cache.buf[:, :, b, base[b]: base[b] + k] = cache.buf[:, :, b, src]
    cache.lens.copy_(prefix_lens.to(torch.int64) + accept_len.to(torch.int64) + 1)
