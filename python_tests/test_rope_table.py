"""rope_cos_sin's position table: every row has the bits of computing that position alone, the
table grows past its end, and what it cannot hold is computed per call."""

from __future__ import annotations

import pytest
import torch

from adaeagle_ext.models import llama


def inv_freq(head_dim: int = 64, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_table_row_has_the_bits_of_one_position(dtype):
    freqs = inv_freq()
    table_cos, table_sin = llama.rope_cos_sin(torch.arange(llama._ROPE_TABLE_MIN), freqs, dtype)
    for p in range(llama._ROPE_TABLE_MIN):
        cos, sin = llama._rope_compute(torch.tensor([p]), freqs, dtype)
        assert torch.equal(table_cos[p], cos[0]) and torch.equal(table_sin[p], sin[0]), p


@pytest.mark.parametrize("positions", [[0], [3, 1, 2], [4095, 4096, 9000], [70000, 5], [-1, 2]])
def test_calls_match_the_direct_computation(positions):
    freqs = inv_freq(128, 500000.0)
    pos = torch.tensor(positions)
    for dtype in (torch.float32, torch.bfloat16):
        got = llama.rope_cos_sin(pos, freqs, dtype)
        want = llama._rope_compute(pos, freqs, dtype)
        for a, b in zip(got, want, strict=True):
            assert a.shape == (len(positions), 1, 128) and a.dtype == dtype
            assert torch.equal(a, b)


def test_table_grows_and_follows_in_place_changes():
    freqs = inv_freq()
    llama.rope_cos_sin(torch.tensor([1]), freqs, torch.float32)
    table = freqs._rope_tables[(torch.float32, torch.device("cpu"))][1]
    assert table.shape[0] == llama._ROPE_TABLE_MIN
    llama.rope_cos_sin(torch.tensor([llama._ROPE_TABLE_MIN + 5]), freqs, torch.float32)
    assert freqs._rope_tables[(torch.float32, torch.device("cpu"))][1].shape[0] == \
        2 * llama._ROPE_TABLE_MIN
    freqs.mul_(0.5)  # a changed tensor must not serve the old table
    got = llama.rope_cos_sin(torch.tensor([7]), freqs, torch.float32)
    assert torch.equal(got[0], llama._rope_compute(torch.tensor([7]), freqs, torch.float32)[0])


def test_golden_position_zero():
    cos, sin = llama.rope_cos_sin(torch.tensor([0, 0]), inv_freq(32), torch.bfloat16)
    assert torch.equal(cos, torch.ones(2, 1, 32, dtype=torch.bfloat16))
    assert torch.equal(sin, torch.zeros(2, 1, 32, dtype=torch.bfloat16))
