"""Fuzzing ``linear`` and ``ldlp_mlp``: random shapes, every packed type, arbitrary weight bytes
(NaN / inf scales included), empty batches and leading dims match ``ref``; unsupported types,
bad K, bad row bytes and malformed tensors raise a clear error."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, mutate
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
TYPES = [ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16, ops.GGML_Q4_0, ops.GGML_Q4_1, ops.GGML_Q8_0]


@hypothesis.given(st.data())
def test_linear_matches_ref_on_any_bytes(data):
    draw = data.draw
    gtype = draw(st.sampled_from(TYPES))
    block = ops.GGML_BLOCKS[gtype][0]
    k = block * draw(st.integers(1, 5)) if block > 1 else draw(st.integers(1, 70))
    m, n = draw(st.integers(0, 9)), draw(st.integers(0, 17))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    weight = torch.randint(0, 256, (n, ops.ggml_row_bytes(gtype, k)), generator=gen,
                           dtype=torch.uint8)
    if draw(st.booleans()):  # tame scales: mostly finite values
        weight = weight & 0x3F
    x = torch.randn(m, k, generator=gen).to(draw(st.sampled_from([torch.float32,
                                                                  torch.bfloat16])))
    bias = torch.randn(n, generator=gen) if draw(st.booleans()) else None
    got = ops.linear(x, weight, gtype, bias, out_dtype=torch.float32)
    want = ref.linear(x, weight, gtype, bias)
    assert got.shape == want.shape
    # The kernel's fixed summation order differs from a matmul's: compare finite entries by
    # tolerance, and non-finite ones by kind (an inf - inf sum is NaN in both).
    finite = torch.isfinite(want) & torch.isfinite(got)
    scale = want[finite].abs().max().item() if finite.any() else 1.0
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4 * max(scale, 1.0),
                               rtol=1e-4)
    both = torch.isfinite(want) == torch.isfinite(got)
    mostly = both.float().mean().item() if both.numel() else 1.0
    assert mostly > 0.9 or not finite.any()


def test_linear_edges():
    w = ops.ggml_row_bytes(ops.GGML_Q8_0, 32)
    weight = torch.zeros(3, w, dtype=torch.uint8)
    assert ops.linear(torch.randn(0, 32), weight, ops.GGML_Q8_0).shape == (0, 3)
    assert ops.linear(torch.randn(2, 4, 32), weight, ops.GGML_Q8_0).shape == (2, 4, 3)
    assert ops.linear(torch.randn(2, 32), weight[:0], ops.GGML_Q8_0).shape == (2, 0)
    assert_clear_error(lambda: ops.linear(torch.randn(1, 32), weight, 12), "ggml_type",
                       "Q4_K")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 32), weight, -1), "ggml_type")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 16), weight, ops.GGML_Q8_0), "K=")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 64), weight, ops.GGML_Q8_0),
                       "weight.size(1)")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 32), weight, ops.GGML_Q8_0,
                                          torch.randn(4)), "bias")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 32), weight, ops.GGML_Q8_0,
                                          out=torch.empty(1, 4)), "out")
    assert_clear_error(lambda: ops.linear(torch.randn(1, 32).half(), weight, ops.GGML_Q8_0),
                       "x")
    assert_clear_error(lambda: ops.linear(torch.randn(()), weight, ops.GGML_Q8_0), "linear")
    with pytest.raises(ValueError, match="not supported"):
        ops.ggml_row_bytes(12, 256)


@pytest.mark.parametrize("arg", ["weight", "bias"])
@pytest.mark.parametrize("kind", MUTATIONS)
def test_linear_malformed_tensors_are_named(arg, kind):
    args = dict(weight=torch.zeros(3, 34, dtype=torch.uint8), bias=torch.randn(3))
    bad = mutate(args[arg], kind)
    args[arg] = bad
    assert_clear_error(lambda: ops.linear(torch.randn(2, 32), args["weight"], ops.GGML_Q8_0,
                                          args["bias"]), "linear", arg)


def _ldlp(hidden, width, dtype, gen):
    w = ops.LdlpWeights(
        torch.randn(width, 2 * hidden, generator=gen) / (2 * hidden) ** 0.5,
        torch.randn(width, generator=gen),
        torch.randn(3, width, width, generator=gen) / width ** 0.5,
        torch.randn(3, width, generator=gen),
        torch.randn(1, width, generator=gen) / width ** 0.5 * 4,
        torch.randn(1, generator=gen) + 3,
    )
    return w.to(dtype)


@hypothesis.given(st.data())
def test_ldlp_matches_ref(data):
    draw = data.draw
    batch, hidden = draw(st.integers(0, 5)), draw(st.integers(1, 40))
    width = draw(st.sampled_from([1, 7, 64, 1024]) | st.integers(1, 80))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    weights = _ldlp(hidden, width, dtype, gen)
    emb = torch.randn(batch, hidden, generator=gen).to(dtype)
    hid = (torch.randn(batch, hidden, generator=gen) * 30).to(dtype)
    if batch and draw(st.booleans()):  # an all-zero row, a NaN row
        emb[0] = 0.0
        hid[-1, 0] = float("nan")
    k_max = draw(st.sampled_from([0, 1, 8, 2**31 - 1]))
    eps = draw(st.sampled_from([1e-6, 1e-30, 1.0]))
    got = ops.ldlp_mlp(emb, hid, weights, k_max, eps, return_raw=True, return_max=True)
    lengths, raw, max_len = ref.ldlp_mlp(emb, hid, *weights, k_max, eps)
    torch.testing.assert_close(got.raw, raw, rtol=1e-4, atol=1e-4, equal_nan=True)
    # lengths follow the op's own raw exactly: clamp(round(raw), 0, k_max), NaN -> 0
    own = torch.round(got.raw.double()).nan_to_num(0.0).clamp(0, k_max).to(torch.int32)
    assert torch.equal(got.lengths, own)
    assert int(got.max_len) == (int(got.lengths.max()) if batch else 0)
    assert bool(((got.lengths >= 0) & (got.lengths <= k_max)).all())


def test_ldlp_edges():
    gen = torch.Generator().manual_seed(0)
    w = _ldlp(4, 8, torch.float32, gen)
    e = torch.randn(2, 4)
    assert_clear_error(lambda: ops.ldlp_mlp(e, e, w, -1), "k_max")
    assert_clear_error(lambda: ops.ldlp_mlp(e, e, w, 2**31), "k_max")
    for eps in (0.0, -1.0, 1e-50, float("nan")):
        assert_clear_error(lambda ep=eps: ops.ldlp_mlp(e, e, w, 4, ep), "eps")
    assert_clear_error(lambda: ops.ldlp_mlp(e, torch.randn(2, 5), w, 4), "hidden")
    assert_clear_error(lambda: ops.ldlp_mlp(torch.randn(2, 5), torch.randn(2, 5), w, 4), "w_in")
    wide = _ldlp(4, 1025, torch.float32, gen)
    assert_clear_error(lambda: ops.ldlp_mlp(e, e, wide, 4), "width")
    assert_clear_error(lambda: ops.ldlp_mlp(e, e.bfloat16(), w, 4), "hidden")
    assert_clear_error(lambda: ops.ldlp_mlp(e.half(), e.half(), w, 4), "emb")
    mixed = w._replace(b_in=w.b_in.bfloat16())
    assert_clear_error(lambda: ops.ldlp_mlp(e, e, mixed, 4), "b_in")
    with pytest.raises((KeyError, TypeError, ValueError)):
        ops.ldlp_mlp(e, e, {"w_in": w.w_in}, 4)


@pytest.mark.parametrize("field", ops.LdlpWeights._fields)
@pytest.mark.parametrize("kind", [*MUTATIONS, "size"])
def test_ldlp_malformed_weights_are_named(field, kind):
    w = _ldlp(4, 8, torch.float32, torch.Generator().manual_seed(1))
    t = getattr(w, field)
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    if bad is None:
        pytest.skip("does not apply")
    e = torch.randn(2, 4)
    # w_in sets the width W: resizing it moves the error to the first tensor of width W
    names = ["ldlp_mlp"] + ([] if field == "w_in" and kind in ("size", "rank_down") else [field])
    assert_clear_error(lambda: ops.ldlp_mlp(e, e, w._replace(**{field: bad}), 4), *names)
