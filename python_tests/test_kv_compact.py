"""kv_compact: golden moves, random trees against ref.py, untouched memory, opcheck, bad input."""

from __future__ import annotations

import pytest
import torch
from tree_fixtures import random_batch

from adaeagle_ext import ops, ref

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def row_id_cache(num_layers, batch, s_max, dim=2):
    """A float32 cache whose every element says where its row is:
    10000*layer + 1000*kv + 100*b + s."""
    layer, kv, b, s = torch.meshgrid(torch.arange(num_layers), torch.arange(2), torch.arange(batch),
                                 torch.arange(s_max), indexing="ij")
    ids = (10000 * layer + 1000 * kv + 100 * b + s).float()
    return ids[..., None, None].expand(-1, -1, -1, -1, 1, dim).contiguous()


def random_bits_cache(gen, shape, dtype):
    """A cache of random bit patterns (NaNs included): the op must move rows as raw bytes."""
    bits = BITS[dtype]
    info = torch.iinfo(bits)
    raw = torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64)
    return raw.to(bits).view(dtype)


def same_bits(a, b):
    return torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def row_ids_of(cache, layer, kv, b):
    return cache[layer, kv, b, :, 0, 0].long().tolist()


def test_golden_chain_moves_nothing(device):
    cache = row_id_cache(2, 1, 8).to(device)
    before = cache.clone()
    seq_lens = ops.kv_compact(cache, i32([[0, 1, 2, 3]]).to(device), i32([3]).to(device),
                              i32([2]).to(device))
    assert seq_lens.cpu().tolist() == [6]
    assert same_bits(cache, before)


def test_golden_tree_moves_two_rows(device):
    cache = row_id_cache(2, 1, 8).to(device)
    # prefix 1, accepted path [0, 2, 5]: row 3 -> row 2, row 6 -> row 3
    seq_lens = ops.kv_compact(cache, i32([[0, 2, 5, -1]]).to(device), i32([2]).to(device),
                              i32([1]).to(device))
    assert seq_lens.cpu().tolist() == [4]
    cache = cache.cpu()
    assert row_ids_of(cache, 0, 0, 0) == [0, 1, 3, 6, 4, 5, 6, 7]
    assert row_ids_of(cache, 0, 1, 0) == [1000, 1001, 1003, 1006, 1004, 1005, 1006, 1007]
    assert row_ids_of(cache, 1, 0, 0) == [10000, 10001, 10003, 10006, 10004, 10005, 10006, 10007]
    assert row_ids_of(cache, 1, 1, 0) == [11000, 11001, 11003, 11006, 11004, 11005, 11006, 11007]


def test_golden_ragged_batch(device):
    cache = row_id_cache(1, 2, 8).to(device)
    # request 0: prefix 3, path [0, 1, 3, 4] (rows 6, 7 -> 5, 6); request 1: nothing accepted
    seq_lens = ops.kv_compact(cache, i32([[0, 1, 3, 4], [0, -1, -1, -1]]).to(device),
                              i32([3, 0]).to(device), i32([3, 5]).to(device))
    assert seq_lens.cpu().tolist() == [7, 6]
    cache = cache.cpu()
    assert row_ids_of(cache, 0, 0, 0) == [0, 1, 2, 3, 4, 6, 7, 7]
    assert row_ids_of(cache, 0, 1, 0) == [1000, 1001, 1002, 1003, 1004, 1006, 1007, 1007]
    assert row_ids_of(cache, 0, 0, 1) == [100, 101, 102, 103, 104, 105, 106, 107]
    assert row_ids_of(cache, 0, 1, 1) == [1100, 1101, 1102, 1103, 1104, 1105, 1106, 1107]


def random_accepted_paths(gen, batch, max_depth=63):
    """Random trees and a random root-to-leaf path prefix of each: (accept_local [B, P],
    accept_len [B], prefix_lens [B], tree sizes)."""
    parents, indptr, _ = random_batch(gen, batch, 64, bushiness=0.6)
    prefix = torch.randint(0, 40, (batch,), generator=gen, dtype=torch.int32)
    leaf_paths, num_leaves = ref.build_tree(parents, indptr, prefix, 63, 64)[5:]
    width = max_depth + 1
    accept_local = torch.full((batch, width), -1, dtype=torch.int32)
    accept_len = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        leaf = int(torch.randint(0, int(num_leaves[b]), (), generator=gen))
        path = [v for v in leaf_paths[b, leaf].tolist() if v >= 0][:width]
        keep = int(torch.randint(1, len(path) + 1, (), generator=gen))
        accept_local[b, :keep] = i32(path[:keep])
        accept_len[b] = keep - 1
    return accept_local, accept_len, prefix, (indptr[1:] - indptr[:-1]).tolist()


def moved_rows_mask(shape, accept_local, accept_len, prefix):
    """bool [L, 2, B, S_max]: the rows the op may write (destinations of real moves)."""
    mask = torch.zeros(shape[:4], dtype=torch.bool)
    for b in range(shape[2]):
        for i in range(1, int(accept_len[b]) + 1):
            if int(accept_local[b, i]) != i:
                mask[:, :, b, int(prefix[b]) + i] = True
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("hkv, dim", [(1, 64), (3, 128), (3, 3)])
def test_matches_reference_and_touches_only_moved_rows(device, dtype, num_layers, hkv, dim):
    gen = torch.Generator().manual_seed(num_layers * 1000 + hkv * 100 + dim)
    for batch in (1, 2, 5, 8):
        accept_local, accept_len, prefix, _ = random_accepted_paths(gen, batch)
        s_max = 40 + 64
        cache = random_bits_cache(gen, (num_layers, 2, batch, s_max, hkv, dim), dtype)
        expected, expected_lens = ref.kv_compact(cache, accept_local, accept_len, prefix)
        got = cache.to(device)
        seq_lens = ops.kv_compact(got, accept_local.to(device), accept_len.to(device),
                                  prefix.to(device))
        got = got.cpu()
        assert torch.equal(seq_lens.cpu(), expected_lens)
        assert same_bits(got, expected)
        untouched = ~moved_rows_mask(cache.shape, accept_local, accept_len, prefix)
        assert same_bits(got[untouched], cache[untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_view_of_larger_buffer(device, dtype):
    gen = torch.Generator().manual_seed(7)
    accept_local, accept_len, prefix, _ = random_accepted_paths(gen, 3)
    big = random_bits_cache(gen, (2, 2, 5, 110, 3, 64), dtype)
    expected_view, expected_lens = ref.kv_compact(big[:, :, 1:4, 3:107], accept_local,
                                                  accept_len, prefix)
    expected = big.clone()
    expected[:, :, 1:4, 3:107] = expected_view
    got = big.to(device)
    view = got[:, :, 1:4, 3:107]
    assert not view.is_contiguous()
    seq_lens = ops.kv_compact(view, accept_local.to(device), accept_len.to(device),
                              prefix.to(device))
    assert torch.equal(seq_lens.cpu(), expected_lens)
    assert same_bits(got.cpu(), expected)  # outside the view too


def test_empty_batch(device):
    cache = torch.zeros(2, 2, 0, 8, 1, 4, device=device)
    empty = torch.zeros(0, dtype=torch.int32, device=device)
    seq_lens = ops.kv_compact(cache, empty.reshape(0, 3), empty, empty)
    assert seq_lens.shape == (0,)


def test_validate_flag_reports_bad_paths(device):
    cache = torch.zeros(1, 2, 1, 8, 1, 4, device=device)
    with pytest.raises(RuntimeError, match="must be greater than accept_local"):
        ops.kv_compact(cache, i32([[0, 3, 2]]).to(device), i32([2]).to(device),
                       i32([0]).to(device), validate=True)


def test_out_variant_writes_given_buffer():
    cache = row_id_cache(1, 1, 8)
    out = i32([99])
    result = ops.kv_compact(cache, i32([[0, 2]]), i32([1]), i32([4]), out=out)
    assert result.data_ptr() == out.data_ptr()
    assert out.tolist() == [6]
    assert row_ids_of(cache, 0, 0, 0) == [0, 1, 2, 3, 4, 6, 6, 7]


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    accept_local, accept_len, prefix, _ = random_accepted_paths(gen, 3, max_depth=7)
    cache = torch.randn(2, 2, 3, 110, 2, 8, generator=gen)
    torch.library.opcheck(torch.ops.adaeagle.kv_compact,
                          (cache, accept_local, accept_len, prefix, torch.empty_like(prefix)))


@pytest.mark.parametrize(
    "path, accept_len, prefix, message",
    [
        ([0, 1, 2], 3, 0, "accept_len=3 must be in \\[0, 2\\]"),
        ([0, 1, 2], -1, 0, "accept_len=-1 must be in \\[0, 2\\]"),
        ([1, 2, 3], 1, 0, "accept_local\\[0\\]=1, expected the root 0"),
        ([0, 3, 3], 2, 0, "accept_local\\[2\\]=3 must be greater than accept_local\\[1\\]=3"),
        ([0, -1, 2], 1, 0, "accept_local\\[1\\]=-1 must be greater"),
        ([0, 2, 9], 2, 0, "row prefix_lens \\+ accept_local\\[2\\] = 9 is out of range for "
                          "S_max=8"),
        ([0, 1, 2], 1, 7, "row prefix_lens \\+ accept_local\\[1\\] = 8 is out of range"),
        ([0, 1, 2], 0, -2, "prefix_lens=-2 must be >= 0"),
    ],
)
def test_bad_paths_raise_before_moving_anything(path, accept_len, prefix, message):
    cache = row_id_cache(1, 2, 8)
    before = cache.clone()
    accept_local = i32([[0, 1, 3], path])  # request 0 is valid and would move a row
    with pytest.raises(RuntimeError, match="request 1: " + message):
        ops.kv_compact(cache, accept_local, i32([2, accept_len]), i32([0, prefix]))
    assert torch.equal(cache, before)


def test_bad_arguments_raise():
    cache = torch.zeros(2, 2, 1, 8, 2, 4)
    path, n, prefix = i32([[0, 1]]), i32([1]), i32([0])
    with pytest.raises(RuntimeError, match="kv_cache must be float32, bfloat16 or float16"):
        ops.kv_compact(cache.int(), path, n, prefix)
    with pytest.raises(RuntimeError, match="kv_cache must have 6 dimensions"):
        ops.kv_compact(cache[0], path, n, prefix)
    with pytest.raises(RuntimeError, match="kv_cache.size\\(1\\) must be 2"):
        ops.kv_compact(torch.zeros(2, 3, 1, 8, 2, 4), path, n, prefix)
    with pytest.raises(RuntimeError, match="at least one layer"):
        ops.kv_compact(torch.zeros(0, 2, 1, 8, 2, 4), path, n, prefix)
    with pytest.raises(RuntimeError, match="rows \\[Hkv, D\\] must be contiguous"):
        ops.kv_compact(torch.zeros(2, 2, 1, 8, 4, 2).transpose(4, 5), path, n, prefix)
    with pytest.raises(RuntimeError, match="must not have overlapping memory"):
        ops.kv_compact(torch.zeros(2, 2, 1, 1, 2, 4).expand(2, 2, 1, 8, 2, 4), path, n, prefix)
    with pytest.raises(RuntimeError, match="accept_local must be Int"):
        ops.kv_compact(cache, path.long(), n, prefix)
    with pytest.raises(RuntimeError, match="accept_local.size\\(0\\) must be 1"):
        ops.kv_compact(cache, i32([[0, 1], [0, 1]]), n, prefix)
    with pytest.raises(RuntimeError, match="accept_local.size\\(1\\) \\(max_depth \\+ 1\\)"):
        ops.kv_compact(cache, torch.zeros(1, 65, dtype=torch.int32), n, prefix)
    with pytest.raises(RuntimeError, match="accept_len must have 1 dimension"):
        ops.kv_compact(cache, path, n[None], prefix)
    with pytest.raises(RuntimeError, match="prefix_lens.size\\(0\\) must be 1"):
        ops.kv_compact(cache, path, n, i32([0, 0]))
    with pytest.raises(RuntimeError, match="seq_lens must be Int"):
        ops.kv_compact(cache, path, n, prefix, out=torch.zeros(1, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="seq_lens must not share memory"):
        ops.kv_compact(cache, path, n, prefix, out=prefix)
