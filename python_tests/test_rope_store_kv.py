"""rope_store_kv: hand-computed goldens, bitwise equality with the PyTorch code (ref.py) over
shapes and dtypes, untouched cache rows, aliasing, opcheck, bad input, and the model's use."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import chain_then_tree, random_weights, tiny_config

from adaeagle_ext import ops, ref
from adaeagle_ext.models import llama
from adaeagle_ext.packed import PackedWeight


def t(values, dtype=torch.float32, device="cpu"):
    return torch.tensor(values, dtype=dtype, device=device)


def idx(values, device="cpu"):
    return torch.tensor(values, dtype=torch.int64, device=device)


def test_golden_float32(device):
    # H = Hkv = 1, D = 4: rotate_half(q) = [-3, -4, 1, 2]
    # q * cos = [1, 1, 3, 2], rot * sin = [0, -2, 2, -2]          -> [1, -1, 5, 0]
    # k * cos = [10, 10, 30, 20], rot(k) * sin = [0, -20, 20, -20] -> [10, -10, 50, 0]
    qkv = t([[1, 2, 3, 4, 10, 20, 30, 40, 7, 8, 9, -1]], device=device)
    cos = t([[1, 0.5, 1, 0.5]], device=device)
    sin = t([[0, 0.5, 2, -1]], device=device)
    cache = torch.zeros(2, 2, 2, 3, 1, 4, device=device)
    q = ops.rope_store_kv(qkv, cos, sin, cache, 1, idx([1], device), idx([2], device), 1, 1)
    assert q.cpu().tolist() == [[[1.0, -1.0, 5.0, 0.0]]]
    assert cache[1, 0, 1, 2, 0].cpu().tolist() == [10.0, -10.0, 50.0, 0.0]
    assert cache[1, 1, 1, 2, 0].cpu().tolist() == [7.0, 8.0, 9.0, -1.0]
    assert int((cache != 0).sum()) == 7  # nothing else written (k holds one zero)


def test_golden_bfloat16_rounds_each_product(device):
    # D = 2. q0 * cos0 = 1 + 2^-8 - 2^-15 rounds to 1; -q1 * sin0 = 2^-8; 1 + 2^-8 is a tie that
    # rounds to 1 (one rounding of the exact sum would give 1.0078125).
    # q1 * cos1 = -0.498046875, q0 * sin1 = 0.00787353515625: sum rounds to -0.490234375.
    bf = torch.bfloat16
    qkv = t([[1.0078125, -0.5, 1.0078125, -0.5, 3.0, 0.25]], bf, device)
    cos = t([[0.99609375, 0.99609375]], bf, device)
    sin = t([[0.0078125, 0.0078125]], bf, device)
    cache = torch.zeros(1, 2, 1, 1, 1, 2, dtype=bf, device=device)
    q = ops.rope_store_kv(qkv, cos, sin, cache, 0, idx([0], device), idx([0], device), 1, 1)
    assert q.float().cpu().tolist() == [[[1.0, -0.490234375]]]
    assert cache[0, 0, 0, 0, 0].float().cpu().tolist() == [1.0, -0.490234375]
    assert cache[0, 1, 0, 0, 0].float().cpu().tolist() == [3.0, 0.25]


def dtypes_for(device):
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


def random_case(n, heads, kv_heads, d, dtype, device, seed, layers=3, batch=3, s_max=24):
    """Random qkv, tables, a random (non-zero) cache and distinct random (req, row) pairs."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(n, (heads + 2 * kv_heads) * d, generator=gen) * 4).to(dtype)
    angle = torch.rand(n, d, generator=gen) * 100
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    cache = torch.randn(layers, 2, batch, s_max, kv_heads, d, generator=gen).to(dtype)
    slot = torch.randperm(batch * s_max, generator=gen)[:n]
    req, rows = slot // s_max, slot % s_max
    return [x.to(device) for x in (qkv, cos, sin, cache, req, rows)]


@pytest.mark.parametrize("n", [0, 1, 3, 17])
@pytest.mark.parametrize("d", [8, 64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4), (8, 2)])
def test_bitwise_equal_to_pytorch(device, n, d, heads, kv_heads):
    for dtype in dtypes_for(device):
        qkv, cos, sin, cache, req, rows = random_case(n, heads, kv_heads, d, dtype, device,
                                                      seed=n * 1000 + d + heads)
        want_cache = cache.clone()
        want_q = ref.rope_store_kv(qkv, cos, sin, want_cache, 1, req, rows, heads, kv_heads)
        qkv_before = qkv.clone()
        q = ops.rope_store_kv(qkv, cos, sin, cache, 1, req, rows, heads, kv_heads)
        assert q.shape == (n, heads, d) and q.dtype == dtype
        assert torch.equal(q, want_q), dtype
        assert torch.equal(cache, want_cache), dtype  # every row, written or not
        assert torch.equal(qkv, qkv_before)


def test_many_tokens_on_threads():
    # 200 tokens: more than one task of at::parallel_for; [N, 1, D] tables as the model has
    for dtype in (torch.float32, torch.bfloat16):
        qkv, cos, sin, cache, req, rows = random_case(200, 9, 3, 64, dtype, "cpu", seed=5,
                                                      batch=2, s_max=128)
        want_cache = cache.clone()
        want_q = ref.rope_store_kv(qkv, cos, sin, want_cache, 2, req, rows, 9, 3)
        q = ops.rope_store_kv(qkv, cos[:, None], sin[:, None], cache, 2, req, rows, 9, 3)
        assert torch.equal(q, want_q) and torch.equal(cache, want_cache)


def test_float32_has_no_fused_multiply_add():
    # On these inputs one fma(x, cos, rot * sin) differs from the rounded products in some
    # element, so equality with PyTorch shows each product is rounded on its own.
    qkv, cos, sin, cache, req, rows = random_case(17, 9, 3, 64, torch.float32, "cpu", seed=8)
    q = ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 9, 3)
    x, c, s = qkv[:, :9 * 64].view(17, 9, 64), cos[:, None], sin[:, None]
    # fma(x, cos, rot * sin): x * cos is exact in float64, then one rounding
    fused = (x.double() * c.double() + (ref.rotate_half(x) * s).double()).float()
    assert not torch.equal(fused, q)
    assert torch.equal(q, ref.rope_store_kv(qkv, cos, sin, cache.clone(), 0, req, rows, 9, 3))


def test_untouched_layers_and_rows(device):
    qkv, cos, sin, cache, req, rows = random_case(5, 4, 2, 8, torch.bfloat16, device, seed=2)
    before = cache.clone()
    ops.rope_store_kv(qkv, cos, sin, cache, 2, req, rows, 4, 2)
    written = torch.zeros(cache.shape[:4], dtype=torch.bool, device=device)
    written[2, :, req, rows] = True
    assert torch.equal(cache[~written], before[~written])
    assert not torch.equal(cache[written], before[written])
    assert torch.equal(cache[2, 1, req, rows], qkv[:, 6 * 8:].view(5, 2, 8))  # v copied as is


def test_q_out_given_and_cache_in_place(device):
    qkv, cos, sin, cache, req, rows = random_case(3, 4, 2, 8, torch.float32, device, seed=4)
    q_out = torch.full((3, 4, 8), 9.0, device=device)
    cache_ptr = cache.data_ptr()
    got = ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 4, 2, q_out=q_out)
    assert got is q_out and cache.data_ptr() == cache_ptr
    assert torch.equal(q_out, ops.rope_store_kv(qkv, cos, sin, cache.clone(), 0, req, rows, 4, 2))


def test_overlapping_outputs_raise():
    qkv, cos, sin, cache, req, rows = random_case(1, 2, 1, 8, torch.float32, "cpu", seed=6)
    overlap = "refer to a single memory location"
    with pytest.raises(RuntimeError, match=overlap):  # q_out is qkv's q part (N = 1)
        ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 2, 1,
                          q_out=qkv[:, :16].view(1, 2, 8))
    with pytest.raises(RuntimeError, match=overlap):  # qkv lives in the cache
        ops.rope_store_kv(cache.view(-1)[:32].view(1, 32), cos, sin, cache, 0, req, rows, 2, 1)
    with pytest.raises(RuntimeError, match=overlap):  # q_out lives in the cache
        ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 2, 1,
                          q_out=cache.view(-1)[:16].view(1, 2, 8))


def test_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        qkv, cos, sin, cache, req, rows = random_case(3, 4, 2, 8, dtype, "cpu", seed=1)
        torch.library.opcheck(torch.ops.adaeagle.rope_store_kv,
                              (qkv, cos, sin, cache, 1, req, rows, 4, 2,
                               torch.empty(3, 4, 8, dtype=dtype)))


def test_bad_arguments_raise():
    qkv, cos, sin, cache, req, rows = random_case(2, 4, 2, 8, torch.float32, "cpu", seed=3)
    op = torch.ops.adaeagle.rope_store_kv
    q_out = torch.empty(2, 4, 8)

    def call(**changes):
        args = dict(qkv=qkv, cos=cos, sin=sin, kv_cache=cache, layer=0, req=req, rows=rows,
                    num_heads=4, num_kv_heads=2, q_out=q_out)
        args.update(changes)
        op(*args.values())

    bf = torch.bfloat16
    with pytest.raises(RuntimeError, match="qkv must be float32 or bfloat16"):
        call(qkv=qkv.to(torch.int32))
    with pytest.raises(RuntimeError, match="qkv must be float32 or bfloat16 on this device"):
        call(qkv=qkv.half())
    with pytest.raises(RuntimeError, match=r"cos \(same dtype as qkv\) must be BFloat16"):
        call(qkv=qkv.to(bf), kv_cache=cache.to(bf), q_out=q_out.to(bf))
    with pytest.raises(RuntimeError, match=r"kv_cache \(same dtype as qkv\) must be Float"):
        call(kv_cache=cache.to(bf))
    with pytest.raises(RuntimeError, match=r"q_out \(same dtype as qkv\) must be Float"):
        call(q_out=q_out.to(bf))
    with pytest.raises(RuntimeError, match=r"qkv.size\(1\) must be \(num_heads \+ 2 \* "
                                           r"num_kv_heads\) \* D = \(4 \+ 2 \* 2\) \* 8"):
        call(qkv=torch.randn(2, 72))
    with pytest.raises(RuntimeError, match=r"kv_cache.size\(4\) must be 1"):
        call(num_kv_heads=1)
    with pytest.raises(RuntimeError, match="num_heads and num_kv_heads must be >= 1"):
        call(num_heads=0)
    with pytest.raises(RuntimeError, match=r"kv_cache must be \[L, 2, B, S_max, Hkv, D\]"):
        call(kv_cache=torch.zeros(3, 3, 3, 24, 2, 8))
    with pytest.raises(RuntimeError, match=r"cos \(same dtype as qkv\).size\(0\) must be 2"):
        call(cos=cos[:1])
    with pytest.raises(RuntimeError, match=r"sin \(same dtype as qkv\).size\(1\) must be 8"):
        call(sin=torch.randn(2, 6))
    with pytest.raises(RuntimeError, match=r"req.size\(0\) must be 2"):
        call(req=req[:1])
    with pytest.raises(RuntimeError, match="rows must be Long"):
        call(rows=rows.int())
    with pytest.raises(RuntimeError, match=r"q_out.size\(1\) must be 4"):
        call(q_out=torch.empty(2, 3, 8))
    with pytest.raises(RuntimeError, match="head dim D .* must be even and > 0, got 7"):
        call(qkv=torch.randn(2, 56), cos=torch.randn(2, 7), sin=torch.randn(2, 7),
             kv_cache=torch.zeros(1, 2, 1, 4, 2, 7), req=idx([0, 0]), rows=idx([0, 1]),
             q_out=torch.empty(2, 4, 7))
    with pytest.raises(RuntimeError, match="qkv must be contiguous"):
        call(qkv=torch.randn(64, 2).T)
    with pytest.raises(RuntimeError, match="kv_cache .* must be contiguous"):
        call(kv_cache=torch.zeros(3, 2, 3, 24, 2, 16)[..., ::2])
    with pytest.raises(RuntimeError, match=r"layer must be in \[0, 3\), got 3"):
        call(layer=3)
    with pytest.raises(RuntimeError, match=r"layer must be in \[0, 3\), got -1"):
        call(layer=-1)


@pytest.mark.parametrize("which,values,message", [
    ("req", [0, 3], r"req\[1\]=3 is out of range \[0, 3\)"),
    ("req", [-1, 0], r"req\[0\]=-1 is out of range \[0, 3\)"),
    ("rows", [0, 24], r"rows\[1\]=24 is out of range \[0, 24\)"),
    ("rows", [-2, 0], r"rows\[0\]=-2 is out of range \[0, 24\)"),
])
def test_out_of_range_index_raises_and_writes_nothing(which, values, message):
    qkv, cos, sin, cache, req, rows = random_case(2, 4, 2, 8, torch.float32, "cpu", seed=3)
    bad = dict(req=req, rows=rows)
    bad[which] = idx(values)
    before = cache.clone()
    with pytest.raises(RuntimeError, match=message):
        ops.rope_store_kv(qkv, cos, sin, cache, 0, bad["req"], bad["rows"], 4, 2)
    assert torch.equal(cache, before)


def test_cuda_validate_and_unvalidated_bad_rows(device):
    if device == "cpu":
        pytest.skip("the CPU kernel always checks (test_out_of_range_index_raises...)")
    qkv, cos, sin, cache, _, _ = random_case(2, 4, 2, 8, torch.float32, device, seed=3)
    req, rows = idx([0, 1], device), idx([5, 24], device)
    before = cache.clone()
    with pytest.raises(RuntimeError, match=r"rows\[1\]=24 is out of range \[0, 24\)"):
        ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 4, 2, validate=True)
    assert torch.equal(cache, before)
    ops.rope_store_kv(qkv, cos, sin, cache, 0, req, rows, 4, 2)  # token 1 writes nothing
    want = before.clone()
    ref.rope_store_kv(qkv[:1], cos[:1], sin[:1], want, 0, req[:1], rows[:1], 4, 2)
    assert torch.equal(cache, want)


# The model: packed q/k/v run the op; the PyTorch fallback gives the same bits.


def packed_model(dtype):
    config = tiny_config(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=96)
    weights = random_weights(config, seed=11)
    packed = {k: PackedWeight.from_float(v, ops.GGML_Q8_0) for k, v in weights.items()
              if v.dim() == 2 and "embed" not in k}
    return llama.build_model(config, weights, dtype=dtype, packed=packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_uses_the_op_and_the_fallback_gives_the_same_bits(dtype, monkeypatch):
    model = packed_model(dtype)
    assert model.model.layers[0].self_attn.qkv_packed is not None
    calls = []
    real = ops.rope_store_kv

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "rope_store_kv", counting)
    fused = chain_then_tree(model)
    assert len(calls) == 2 * len(model.model.layers)
    monkeypatch.setattr(llama, "_FUSED_ROPE", False)
    apart = chain_then_tree(model)
    assert len(calls) == 2 * len(model.model.layers)  # the fallback does not call it
    for a, b in zip(fused, apart, strict=True):
        assert torch.equal(a, b)
