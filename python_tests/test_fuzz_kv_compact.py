"""Fuzzing ``kv_compact``: random accepted paths match ``ref.kv_compact``; malformed paths,
lengths and prefixes raise a clear error before any row moves; malformed tensors are named."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, i32, mutate
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def compact_cases(draw, hostile: bool):
    layers, batch = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    s_max, width = draw(st.integers(1, 80)), draw(st.integers(1, 64))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    cache = torch.randn(layers, 2, batch, s_max, 2, 3, generator=gen).to(dtype)
    local = torch.full((batch, width), -1, dtype=torch.int32)
    acc_len = torch.zeros(batch, dtype=torch.int32)
    prefix = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        n_acc = draw(st.integers(0, min(width - 1, s_max - 1)))
        last = draw(st.integers(n_acc, s_max - 1))  # the deepest accepted local id
        steps = sorted(torch.randperm(last, generator=gen)[: n_acc].add(1).tolist()) \
            if n_acc else []
        if n_acc:
            steps[-1] = last
            steps = sorted(set(steps))
            n_acc = len(steps)
        local[b, : n_acc + 1] = i32([0, *steps])
        acc_len[b] = n_acc
        prefix[b] = draw(st.integers(0, s_max - 1 - (steps[-1] if steps else 0)))
    if hostile and batch:
        b = draw(st.integers(0, batch - 1))
        what = draw(st.sampled_from(["len", "root", "order", "prefix", "past_end"]))
        if what == "len":
            acc_len[b] = draw(st.sampled_from([-1, width, 2**31 - 1, -(2**31)]))
        elif what == "root":
            local[b, 0] = draw(st.sampled_from([-1, 1, 2**31 - 1]))
        elif what == "order" and width >= 2:
            acc_len[b] = max(int(acc_len[b]), 1)
            local[b, 1] = draw(st.sampled_from([0, -1, -(2**31)]))
        elif what == "prefix":
            prefix[b] = draw(st.sampled_from([-1, -(2**31)]))
        else:
            prefix[b] = draw(st.sampled_from([s_max, 2**31 - 1 - 64, 2**31 - 1]))
    return cache, local, acc_len, prefix


@hypothesis.given(compact_cases(hostile=False))
def test_valid_paths_match_ref(case):
    cache, local, acc_len, prefix = case
    want, want_lens = ref.kv_compact(*case)
    lens = ops.kv_compact(*case)
    assert torch.equal(cache, want) and torch.equal(lens, want_lens)


@hypothesis.given(compact_cases(hostile=True))
def test_hostile_paths_raise_before_moving(case):
    cache = case[0]
    before = cache.clone()
    try:
        want, want_lens = ref.kv_compact(*case)
        ref_ok = True
    except (IndexError, RuntimeError):
        ref_ok = False
    try:
        lens = ops.kv_compact(*case)
    except (RuntimeError, ValueError) as exc:
        assert "kv_compact: request" in str(exc)
        assert torch.equal(cache, before), "rows moved before the error"
        return
    assert ref_ok and torch.equal(cache, want) and torch.equal(lens, want_lens)


def test_edges():
    cache = torch.randn(2, 2, 0, 5, 1, 4)
    lens = ops.kv_compact(cache, torch.empty(0, 3, dtype=torch.int32),
                          torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int32))
    assert lens.shape == (0,)
    # a 64-wide path accepted in full, ending on the last cache row
    cache = torch.randn(1, 2, 1, 70, 1, 4)
    want, _ = ref.kv_compact(cache, i32([list(range(64))]), i32([63]), i32([6]))
    lens = ops.kv_compact(cache, i32([list(range(64))]), i32([63]), i32([6]))
    assert int(lens[0]) == 70 and torch.equal(cache, want)
    assert_clear_error(lambda: ops.kv_compact(cache, i32([list(range(64))]), i32([63]),
                                              i32([7])), "kv_compact", "S_max")
    assert_clear_error(lambda: ops.kv_compact(cache, torch.zeros(1, 65, dtype=torch.int32),
                                              i32([0]), i32([0])), "accept_local")
    out = torch.empty(1, dtype=torch.int32)
    prefix = i32([0])
    assert_clear_error(lambda: ops.kv_compact(cache, i32([[0]]), i32([0]), prefix, out=prefix),
                       "seq_lens")
    expanded = torch.randn(1, 2, 1, 1, 1, 4).expand(1, 2, 1, 8, 1, 4)
    assert_clear_error(lambda: ops.kv_compact(expanded, i32([[0]]), i32([0]), i32([0]),
                                              out=out), "overlapping")


def _base():
    return dict(kv_cache=torch.randn(2, 2, 2, 6, 2, 4), accept_local=i32([[0, 2], [0, -1]]),
                accept_len=i32([1, 0]), prefix_lens=i32([1, 3]))


@pytest.mark.parametrize("arg", list(_base()))
@pytest.mark.parametrize("kind", [*MUTATIONS, "size"])
def test_malformed_tensors_are_named(arg, kind):
    args = _base()
    t = args[arg]
    if arg == "kv_cache" and kind == "noncontiguous":
        t = torch.randn(2, 2, 2, 6, 4, 2).transpose(-1, -2)  # rows [Hkv, D] not contiguous
        args[arg] = t
        assert_clear_error(lambda: ops.kv_compact(*args.values()), "kv_compact", "rows")
        return
    if arg == "kv_cache" and kind == "size":
        args[arg] = torch.randn(2, 3, 2, 6, 2, 4)  # dim 1 must be 2 (k and v)
    else:
        args[arg] = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    if arg == "kv_cache" and kind == "dtype":
        args[arg] = t.to(torch.float64)
    assert_clear_error(lambda: ops.kv_compact(*args.values()), "kv_compact", arg.split("_")[0])


def test_strided_cache_slice_is_supported():
    """A slice of a larger buffer (strided in the first four dims) compacts like a copy."""
    big = torch.randn(3, 2, 4, 9, 2, 4)
    view = big[1:, :, 1:3, 2:]
    args = (i32([[0, 2], [0, 1]]), i32([1, 1]), i32([1, 0]))
    want, want_lens = ref.kv_compact(view.clone(), *args)
    lens = ops.kv_compact(view, *args)
    assert torch.equal(view, want) and torch.equal(lens, want_lens)
