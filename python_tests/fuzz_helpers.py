"""Shared pieces of the fuzz tests (``test_fuzz_*.py``): hostile-argument mutations and the
"clear error" assertion.

Every op either matches ``ref.py`` or raises a RuntimeError / ValueError whose message names the
op (and, for a malformed tensor, the argument). Memory safety on the way is checked by running
the same tests against the sanitizer build (``make sanitize``).
"""

from __future__ import annotations

import pytest
import torch

CLEAR_ERRORS = (RuntimeError, ValueError)

# How a well-formed tensor argument can be malformed; each must be rejected by name.
MUTATIONS = ("dtype", "rank_up", "rank_down", "noncontiguous")


def mutate(t: torch.Tensor, kind: str) -> torch.Tensor | None:
    """``t`` malformed in one way, or None when that way does not apply to ``t``."""
    if kind == "dtype":
        other = {torch.int32: torch.int64, torch.int64: torch.int32, torch.uint8: torch.int8,
                 torch.float32: torch.float64, torch.bfloat16: torch.float64,
                 torch.float16: torch.float64}[t.dtype]
        return t.to(other)
    if kind == "rank_up":
        return t.unsqueeze(0)
    if kind == "rank_down":
        if t.dim() > 1:
            return t.reshape(-1)
        return t[0] if t.numel() else None
    if kind == "noncontiguous":
        if t.numel() < 2:
            return None
        wide = torch.stack([t, t], dim=-1)[..., 0]
        assert not wide.is_contiguous()
        return wide
    raise AssertionError(kind)


def assert_clear_error(fn, *names: str) -> str:
    """``fn()`` raises a RuntimeError/ValueError whose message contains every one of ``names``;
    returns the message."""
    with pytest.raises(CLEAR_ERRORS) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert name in msg, f"error does not name {name!r}: {msg}"
    return msg


def ok_or_clear_error(fn, op: str):
    """``fn()``'s result, or None when it raised a clear error naming ``op``."""
    try:
        return fn()
    except CLEAR_ERRORS as exc:
        assert op in str(exc), f"error does not name the op {op!r}: {exc}"
        return None


def valid_tree(parents: list[int]) -> bool:
    """A parents array is a valid draft tree: 1..64 nodes, root -1, 0 <= parents[i] < i."""
    return (1 <= len(parents) <= 64 and parents[0] == -1
            and all(0 <= p < i for i, p in enumerate(parents) if i > 0))


def i32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def i64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)
