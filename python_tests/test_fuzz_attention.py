"""Fuzzing ``tree_attention`` and ``merge_attn_states``: random ragged batches, arbitrary mask
rows (garbage bits past the tree included), GQA shapes, empty prefixes and trees at the 64-node
limit match ``ref``; cache rows past each request's end hold NaN that must never be read; bad
lengths, layers, modes and malformed tensors raise a clear error."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, i32, i64, mutate
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)
from tree_fixtures import indptr_of

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@st.composite
def attention_cases(draw):
    batch = draw(st.integers(0, 3))
    sizes = [draw(st.sampled_from([1, 64]) | st.integers(0, 12)) for _ in range(batch)]
    prefix = [draw(st.sampled_from([0, 1]) | st.integers(0, 40)) for _ in range(batch)]
    spare = draw(st.integers(0, 3))
    s_max = max([p + s for p, s in zip(prefix, sizes, strict=True)] + [1]) + spare
    hkv = draw(st.sampled_from([1, 2]))
    heads = hkv * draw(st.sampled_from([1, 3]))
    dim = draw(st.sampled_from([64, 128]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    cache_batch = batch + draw(st.integers(0, 1))
    cache = torch.randn(2, 2, cache_batch, s_max, hkv, dim, generator=gen)
    for b in range(batch):  # rows past prefix + T must never be read
        cache[:, :, b, prefix[b] + sizes[b]:] = float("nan")
    n = sum(sizes)
    # any bits at all: ancestors, non-ancestors, self missing, bits past the tree size
    mask = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    if draw(st.booleans()):
        mask = mask & ((1 << draw(st.integers(0, 63))) - 1)
    q = torch.randn(n, heads, dim, generator=gen)
    mode = draw(st.sampled_from([ops.ATTN_FULL, ops.ATTN_PREFIX_ONLY, ops.ATTN_TREE_ONLY]))
    layer = draw(st.integers(0, 1))
    return (q.to(dtype), cache.to(dtype), layer, i32(prefix), i32(indptr_of(sizes)), mask,
            draw(st.sampled_from([None, 0.05, 1.0])), mode)


# ref.tree_attention loops over nodes in Python: a quarter of the profile's budget.
@hypothesis.settings(max_examples=max(10, hypothesis.settings.default.max_examples // 4))
@hypothesis.given(attention_cases())
def test_random_batches_match_ref(case):
    q, cache, layer, prefix, indptr, mask, scale, mode = case
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = ops.tree_attention(q, cache, layer, prefix, indptr, mask, scale, mode,
                                  return_lse=True)
    want_out, want_lse = ref.tree_attention(q, cache, layer, prefix, indptr, mask, scale, mode)
    tol = TOL[q.dtype]
    torch.testing.assert_close(out.float(), want_out.float(), atol=tol, rtol=tol)
    assert torch.equal(torch.isinf(lse), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[finite], want_lse[finite], atol=1e-4, rtol=1e-5)


@hypothesis.given(st.data())
def test_bad_lengths_raise(data):
    draw = data.draw
    size = draw(st.integers(0, 70))
    s_max = draw(st.integers(1, 80))
    prefix = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 80))
    q = torch.randn(size, 2, 64)
    cache = torch.randn(1, 2, 1, s_max, 1, 64)
    args = (q, cache, 0, i32([prefix]), i32([0, size]), torch.full((size,), -1, dtype=torch.int64))
    if size <= 64 and 0 <= prefix and prefix + size <= s_max:
        out = ops.tree_attention(*args)
        torch.testing.assert_close(out, ref.tree_attention(*args, 64 ** -0.5)[0],
                                   atol=2e-5, rtol=2e-5)
    else:
        assert_clear_error(lambda: ops.tree_attention(*args), "tree_attention")


def test_edges():
    q, cache = torch.randn(0, 2, 64), torch.randn(1, 2, 1, 4, 2, 64)
    out = ops.tree_attention(q, cache, 0, i32([]), i32([0]), i64([]))
    assert out.shape == (0, 2, 64)
    q1 = torch.randn(1, 2, 64)
    base = (cache, 0, i32([0]), i32([0, 1]), i64([1]))
    # no visible key at all: zeros and -inf
    out, lse = ops.tree_attention(q1, *base, mode=ops.ATTN_PREFIX_ONLY, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())
    for layer in (-1, 1):
        assert_clear_error(lambda la=layer: ops.tree_attention(q1, cache, la, *base[2:]),
                           "layer")
    assert_clear_error(lambda: ops.tree_attention(q1, *base, mode=3), "mode")
    assert_clear_error(lambda: ops.tree_attention(torch.randn(1, 3, 64), *base), "heads")
    assert_clear_error(lambda: ops.tree_attention(torch.randn(1, 2, 32), *base), "head dim")
    assert_clear_error(lambda: ops.tree_attention(q1, cache, 0, i32([0, 0]), i32([0, 1, 1]),
                                                  i64([1])), "requests")
    assert_clear_error(lambda: ops.tree_attention(q1, *base, out=torch.empty(2, 2, 64)), "out")
    assert_clear_error(lambda: ops.tree_attention(q1, *base, lse=torch.empty(1, 3)), "lse")


def _base():
    return dict(q=torch.randn(3, 2, 64), kv_cache=torch.randn(2, 2, 2, 8, 1, 64),
                prefix_lens=i32([2, 0]), tree_indptr=i32([0, 2, 3]), mask_bits=i64([1, 3, 1]))


@pytest.mark.parametrize("arg", list(_base()))
@pytest.mark.parametrize("kind", MUTATIONS)
def test_malformed_tensors_are_named(arg, kind):
    args = _base()
    bad = mutate(args[arg], kind)
    if bad is None:
        pytest.skip("does not apply")
    if arg == "q" and kind == "dtype":
        bad = args[arg].to(torch.float64)
    args[arg] = bad
    a = list(args.values())
    names = ["tree_attention"] + ([] if arg == "q" and kind == "rank_down" else [arg])
    assert_clear_error(lambda: ops.tree_attention(a[0], a[1], 0, *a[2:]), *names)


@hypothesis.given(st.data())
def test_merge_matches_ref(data):
    draw = data.draw
    n, heads, dim = draw(st.integers(0, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 130))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    out_a = torch.randn(n, heads, dim, generator=gen).to(dtype)
    out_b = torch.randn(n, heads, dim, generator=gen).to(dtype)
    lse_a = torch.randn(n, heads, generator=gen) * 20
    lse_b = torch.randn(n, heads, generator=gen) * 20
    for lse in (lse_a, lse_b):  # empty sides (-inf), whose outputs may hold anything
        lse[torch.rand(n, heads, generator=gen) < 0.3] = float("-inf")
    out_a[torch.isneginf(lse_a)] = float("nan")
    got, got_lse = ops.merge_attn_states(out_a, lse_a, out_b, lse_b)
    want, want_lse = ref.merge_attn_states(out_a, lse_a, out_b, lse_b)
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(got_lse, want_lse, atol=1e-5, rtol=1e-6)
    if draw(st.booleans()):  # in place into out_b / lse_b
        ops.merge_attn_states(out_a, lse_a, out_b, lse_b, out=out_b, lse=lse_b)
        torch.testing.assert_close(out_b.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("arg", ["out_a", "lse_a", "out_b", "lse_b"])
@pytest.mark.parametrize("kind", [*MUTATIONS, "size"])
def test_merge_malformed_tensors_are_named(arg, kind):
    args = dict(out_a=torch.randn(2, 3, 4), lse_a=torch.randn(2, 3), out_b=torch.randn(2, 3, 4),
                lse_b=torch.randn(2, 3))
    t = args[arg]
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    if kind == "dtype" and arg.startswith("out"):
        bad = t.to(torch.float64)
    args[arg] = bad
    names = ["merge_attn_states"]
    if not (arg == "out_a" and kind in ("rank_up", "rank_down", "size")):
        names.append(arg)
    assert_clear_error(lambda: ops.merge_attn_states(*args.values()), *names)
