"""Shared checks of the ops composed from other ops (decoder_layers, eagle_head_layer)."""

from __future__ import annotations

import torch


def cpu_copy(value):
    """A CPU copy of a tensor, or of each tensor in a list (None and numbers as they are)."""
    if isinstance(value, torch.Tensor):
        return value.clone().cpu()
    if isinstance(value, list):
        return [cpu_copy(v) for v in value]
    return value


def check_against_reference(got, want, args, ref_args, before, dtype) -> None:
    """``got`` (the op's output) and the op's cache writes in ``args["kv_cache"]`` match the
    reference's (``want``, ``ref_args["kv_cache"]``); cache rows outside (req, rows) equal
    ``before``."""
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.cpu().float(), want.float(), **tol)
    cache = args["kv_cache"]
    torch.testing.assert_close(cache.cpu().float(), ref_args["kv_cache"].float(), **tol)
    written = torch.zeros(cache.shape[2], cache.shape[3], dtype=torch.bool)
    written[args["req"].cpu(), args["rows"].cpu()] = True
    assert torch.equal(cache[:, :, ~written], before[:, :, ~written])
