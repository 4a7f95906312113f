"""linear: golden packed blocks, random shapes against ref.py, batch invariance (bit-identical
rows alone and in batches, across thread counts and ISAs), PackedWeight, opcheck, bad input."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.packed import PackedWeight

TYPES = [ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16, ops.GGML_Q4_0, ops.GGML_Q4_1, ops.GGML_Q8_0]
TYPE_IDS = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"]
Q_TYPES = [ops.GGML_Q4_0, ops.GGML_Q4_1, ops.GGML_Q8_0]
Q_IDS = ["Q4_0", "Q4_1", "Q8_0"]
F16_HALF, F16_QUARTER, F16_TWO, F16_MINUS_ONE = 0x3800, 0x3400, 0x4000, 0xBC00


def has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        return False
    return all(flag in flags for flag in ("avx2", "fma", "f16c"))


def u8(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def fp16_bytes(bits: int) -> list[int]:
    return [bits & 0xFF, bits >> 8]


def packed(gen: torch.Generator, n: int, k: int, ggml_type: int) -> torch.Tensor:
    """Random weights with a few outliers, quantised with gguf."""
    w = torch.randn(n, k, generator=gen)
    w[:, ::17] *= 4
    return PackedWeight.from_float(w, ggml_type).data


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, so that -0.0 and 0.0 (and NaN payloads) count as different."""
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def run(x, weight, ggml_type, bias=None, out_dtype=None, act_quant=0):
    return ops.linear(x, weight, ggml_type, bias, out_dtype=out_dtype, act_quant=act_quant)


# ---- golden: hand-packed blocks with literal results


def test_golden_q8_0(device):
    # d = 0.5; row 0: q_i = i - 16; row 1: q_i = 1. x = 1 for k < 16, 2 after.
    row0 = fp16_bytes(F16_HALF) + [(i - 16) & 0xFF for i in range(32)]
    row1 = fp16_bytes(F16_HALF) + [1] * 32
    w = u8([row0, row1]).to(device)
    x = torch.tensor([[1.0] * 16 + [2.0] * 16], device=device)
    bias = torch.tensor([1.0, -1.0], device=device)
    assert run(x, w, ops.GGML_Q8_0).tolist() == [[52.0, 24.0]]
    assert run(x, w, ops.GGML_Q8_0, bias).tolist() == [[53.0, 23.0]]


def test_golden_q4_1(device):
    # d = 0.25, m = -1; byte j = j | (15 - j) << 4, so w_j = 0.25 j - 1 and
    # w_{16+j} = 0.25 (15 - j) - 1; row 1 has all nibbles 0, so every weight is m = -1.
    head = fp16_bytes(F16_QUARTER) + fp16_bytes(F16_MINUS_ONE)
    row0 = head + [j | ((15 - j) << 4) for j in range(16)]
    row1 = head + [0] * 16
    w = u8([row0, row1]).to(device)
    x = torch.zeros(2, 32, device=device)
    x[0] = 1.0
    x[1, 17] = 3.0  # w_17 = 0.25 * 14 - 1 = 2.5
    assert run(x, w, ops.GGML_Q4_1).tolist() == [[28.0, -32.0], [7.5, -3.0]]


def test_golden_q4_0(device):
    # d = 2; low nibbles 15 -> (15 - 8) * 2 = 14, high nibbles 8 -> 0.
    w = u8([fp16_bytes(F16_TWO) + [0x8F] * 16]).to(device)
    x = torch.arange(32, dtype=torch.float32, device=device)[None]
    assert run(x, w, ops.GGML_Q4_0).tolist() == [[14.0 * sum(range(16))]]


def test_golden_plain_types_and_tail(device):
    # K = 9 crosses one 8-lane group: the last group is zero-padded.
    wf = torch.tensor([[1.5, -2.0, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0]])
    x = torch.tensor([[2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5]], device=device)
    expected = [[3.0 - 6.0 + 1.0 - 2.0]]
    for ggml_type, data in [
        (ops.GGML_F32, wf.view(torch.uint8)),
        (ops.GGML_F16, wf.half().view(torch.uint8)),
        (ops.GGML_BF16, wf.bfloat16().view(torch.uint8)),
    ]:
        assert run(x, data.to(device), ggml_type).tolist() == expected, ggml_type


def test_bf16_in_and_out(device):
    w = u8([fp16_bytes(F16_HALF) + [3] * 32]).to(device)
    x = torch.full((1, 32), 0.1, dtype=torch.bfloat16, device=device)
    y = run(x, w, ops.GGML_Q8_0)
    assert y.dtype == torch.bfloat16
    exact = 1.5 * 32 * float(x[0, 0])  # every product and partial sum is exact in fp32
    assert y.item() == float(torch.tensor(exact).bfloat16())
    assert run(x, w, ops.GGML_Q8_0, out_dtype=torch.float32).item() == exact


# ---- random shapes against the reference


@pytest.mark.parametrize("ggml_type", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x32", "xbf16"])
def test_matches_reference(device, ggml_type, x_dtype):
    gen = torch.Generator().manual_seed(ggml_type * 7 + (x_dtype == torch.bfloat16))
    for k in (32, 64, 576):
        for n in (1, 7, 64, 300):
            w = packed(gen, n, k, ggml_type)
            x = torch.randn(64, k, generator=gen).to(x_dtype)
            bias = torch.randn(n, generator=gen) if n % 2 else None
            expected = ref.linear(x, w, ggml_type, bias)
            # error bound of an fp32 sum of K products, relative to sum |w x|
            scale = x.float().abs() @ ref.dequantize(w, ggml_type).abs().T + 1e-6
            wd, bd = w.to(device), None if bias is None else bias.to(device)
            for m in (1, 2, 3, 4, 5, 8, 16, 64):
                xm = x[64 - m:].to(device)
                got = run(xm, wd, ggml_type, bd, torch.float32).cpu()
                err = ((got - expected[64 - m:]).abs() / scale[64 - m:]).max().item()
                assert err < 2e-6, (k, n, m, err)
                if x_dtype == torch.bfloat16:
                    y16 = run(xm, wd, ggml_type, bd).cpu()
                    assert torch.equal(bits(y16), bits(got.bfloat16())), (k, n, m)


def test_dequantize_matches_gguf():
    gen = torch.Generator().manual_seed(3)
    for ggml_type in TYPES:
        w = torch.randn(5, 96, generator=gen) * 3
        data = PackedWeight.from_float(w, ggml_type).data
        expected = gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType(ggml_type))
        got = ref.dequantize(data, ggml_type)
        assert np.array_equal(got.numpy().view(np.int32),
                              expected.reshape(5, 96).astype(np.float32).view(np.int32))


# ---- batch invariance: a row's bits never depend on the other rows, threads or ISA


def _cases_with_act_quant():
    cases = [pytest.param(t, 0, id=f"{name}") for t, name in zip(TYPES, TYPE_IDS, strict=True)]
    return cases + [pytest.param(t, 8, id=f"{name}-q8") for t, name in zip(TYPES, TYPE_IDS,
                                                                           strict=True)
                    if t in Q_TYPES]


@pytest.mark.parametrize(("ggml_type", "act_quant"), _cases_with_act_quant())
@pytest.mark.parametrize("isa", ["auto", "scalar"])
def test_batch_invariance(ggml_type, act_quant, isa, monkeypatch):
    monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", isa)
    gen = torch.Generator().manual_seed(11 + ggml_type)
    k, n = (576, 300) if isa == "auto" else (96, 37)
    w = packed(gen, n, k, ggml_type)
    x = torch.randn(64, k, generator=gen)

    def call(rows):
        return run(rows, w, ggml_type, act_quant=act_quant)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = call(x)
        torch.set_num_threads(1)
        batch_one_thread = call(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(batch), bits(batch_one_thread))
    alone = torch.cat([call(x[i:i + 1].clone()) for i in range(x.shape[0])])
    assert torch.equal(bits(batch), bits(alone))
    # every sub-batch size, so that every tile shape and remainder is exercised
    start = 0
    for size in (1, 2, 3, 4, 5, 6, 7, 9, 27):
        part = call(x[start:start + size])
        assert torch.equal(bits(part), bits(batch[start:start + size])), size
        start += size
    xb = x.bfloat16()
    alone_b = torch.cat([call(xb[i:i + 1].clone()) for i in range(xb.shape[0])])
    assert torch.equal(bits(call(xb)), bits(alone_b))


@pytest.mark.skipif(not has_avx2(), reason="needs AVX2/FMA/F16C")
@pytest.mark.parametrize(("ggml_type", "act_quant"), _cases_with_act_quant())
def test_scalar_and_avx2_agree_bitwise(ggml_type, act_quant, monkeypatch):
    # Both ISAs implement the one order of csrc/cpu/linear.h (linear_q8.h), so they agree to
    # the bit.
    gen = torch.Generator().manual_seed(5)
    for k in (32, 40, 200) if ggml_type in (ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16) else (
            32, 192):
        w = packed(gen, 19, k, ggml_type)
        x = torch.randn(6, k, generator=gen)
        x[1, :32] = 0.0  # a zero block: d = 0
        x[2, 3] = 1e-30  # a tiny value next to normal ones
        bias = torch.randn(19, generator=gen)
        monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "avx2")
        fast = run(x, w, ggml_type, bias, act_quant=act_quant)
        monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "scalar")
        slow = run(x, w, ggml_type, bias, act_quant=act_quant)
        assert torch.equal(bits(fast), bits(slow)), k


@pytest.mark.parametrize("ggml_type", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("k", [576, 800], ids=["k576", "k800"])
def test_every_batch_size_matches_single_rows(ggml_type, k, monkeypatch):
    # Every M from 1 to 40 reaches every AVX2 tile shape and remainder (and, for plain types,
    # K % 32 != 0 tails); K = 800 keeps F16 / BF16 off their fp32-copy path. 20 output rows:
    # two panels of 8 and a tail of 4. Each row must equal the row computed alone and the
    # scalar loop, to the bit.
    plain = ggml_type in (ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16)
    if plain:
        k += 11
    gen = torch.Generator().manual_seed(3 + ggml_type)
    w = packed(gen, 20, k, ggml_type)
    x = torch.randn(40, k, generator=gen)
    bias = torch.randn(20, generator=gen)
    alone = torch.cat([run(x[i:i + 1].clone(), w, ggml_type, bias) for i in range(40)])
    for m in range(1, 41):
        assert torch.equal(bits(run(x[:m], w, ggml_type, bias)), bits(alone[:m])), m
    monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "scalar")
    assert torch.equal(bits(run(x, w, ggml_type, bias)), bits(alone))


# ---- wrapper, PackedWeight, opcheck


def test_leading_dims_and_out_variant():
    gen = torch.Generator().manual_seed(1)
    w = packed(gen, 10, 64, ops.GGML_Q4_1)
    x = torch.randn(2, 3, 64, generator=gen)
    out = torch.full((2, 3, 10), 7.0)
    result = ops.linear(x, w, ops.GGML_Q4_1, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(out, run(x.reshape(6, 64), w, ops.GGML_Q4_1).reshape(2, 3, 10))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.linear(x, w, ops.GGML_Q4_1, out=torch.empty(6, 10))


def test_empty_inputs():
    w = packed(torch.Generator().manual_seed(0), 4, 32, ops.GGML_Q8_0)
    assert run(torch.empty(0, 32), w, ops.GGML_Q8_0).shape == (0, 4)
    assert run(torch.ones(2, 32), w[:0], ops.GGML_Q8_0).shape == (2, 0)


def test_packed_weight_from_gguf_file(tmp_path):
    gen = torch.Generator().manual_seed(2)
    dense = torch.randn(6, 64, generator=gen)
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    stored = {}
    for ggml_type in (ops.GGML_Q4_1, ops.GGML_Q8_0, ops.GGML_F32, ops.GGML_BF16):
        name = f"w{ggml_type}"
        stored[name] = PackedWeight.from_float(dense, ggml_type)
        array = stored[name].data.numpy()
        if ggml_type == ops.GGML_F32:
            array = array.view(np.float32)
        writer.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType(ggml_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    x = torch.randn(3, 64, generator=gen)
    for tensor in reader.tensors:
        pw = PackedWeight.from_gguf_tensor(tensor)
        assert pw.shape == (6, 64) and pw.ggml_type == stored[tensor.name].ggml_type
        assert torch.equal(pw.data, stored[tensor.name].data)
        assert torch.equal(pw.linear(x), run(x, pw.data, pw.ggml_type))
        assert torch.equal(pw.rows(torch.tensor([[4, 0]])), pw.dequantize()[[4, 0]][None])


def test_packed_weight_rejects_bad_data():
    with pytest.raises(ValueError, match="must have shape \\(2, 34\\)"):
        PackedWeight(torch.zeros(2, 33, dtype=torch.uint8), ops.GGML_Q8_0, (2, 32))
    with pytest.raises(ValueError, match="not supported"):
        PackedWeight.from_float(torch.zeros(2, 256), 12)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    w = packed(gen, 9, 64, ops.GGML_Q4_1)
    x = torch.randn(3, 64, generator=gen)
    for bias in (None, torch.randn(9, generator=gen)):
        torch.library.opcheck(torch.ops.adaeagle.linear,
                              (x, w, ops.GGML_Q4_1, bias, torch.empty(3, 9)))
        torch.library.opcheck(torch.ops.adaeagle.linear,
                              (x, w, ops.GGML_Q4_1, bias, torch.empty(3, 9), 8))


# ---- bad input


def test_bad_arguments_raise():
    w = packed(torch.Generator().manual_seed(0), 4, 64, ops.GGML_Q8_0)
    x = torch.ones(2, 64)
    op = torch.ops.adaeagle.linear
    cases = [
        ((torch.ones(2, 48), w[:, :51].contiguous(), 8, None, torch.empty(2, 4)),
         "K=x.size\\(1\\)=48 must be a multiple of 32, the Q8_0 block size"),
        ((x, w[:, :60].contiguous(), 8, None, torch.empty(2, 4)),
         "weight.size\\(1\\) must be 68 bytes \\(K=64 weights of Q8_0\\)"),
        ((x, w, 12, None, torch.empty(2, 4)), "ggml_type 12 \\(Q4_K\\) is not supported"),
        ((x, w, 99, None, torch.empty(2, 4)), "ggml_type 99 \\(unknown\\) is not supported"),
        ((x.half(), w, 8, None, torch.empty(2, 4)), "x must be float32 or bfloat16"),
        ((x, w, 8, torch.ones(5), torch.empty(2, 4)), "bias.size\\(0\\) must be 4"),
        ((x, w, 8, torch.ones(4).double(), torch.empty(2, 4)), "bias must be Float"),
        ((x, w.view(torch.int8), 8, None, torch.empty(2, 4)), "weight must be Byte"),
        ((x, w, 8, None, torch.empty(2, 5)), "out.size\\(1\\) must be 4"),
        ((x, w, 8, None, torch.empty(2, 4, dtype=torch.bfloat16)),
         "out must be float32 or x's dtype"),
        ((x[:, ::2], w[:, :34].contiguous(), 8, None, torch.empty(2, 4)),
         "x must be contiguous"),
        ((x[0], w, 8, None, torch.empty(2, 4)), "x must have 2 dimension"),
        ((x, w, 8, None, torch.empty(2, 4), 4), "act_quant must be 0 \\(float activations\\) "
         "or 8 \\(8-bit activation blocks\\), got 4"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


def test_bad_isa_setting_raises(monkeypatch):
    w = packed(torch.Generator().manual_seed(0), 2, 32, ops.GGML_Q8_0)
    monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "sse9")
    with pytest.raises(RuntimeError, match="ADAEAGLE_LINEAR_ISA must be auto, avx2 or scalar"):
        run(torch.ones(1, 32), w, ops.GGML_Q8_0)


# ---- 8-bit activation blocks (act_quant=8)

# One block of x whose quantisation is hand-checkable: amax = 127 so d = 1 and q = rne(x):
# 2.5 -> 2, 1.5 -> 2, 0.5 -> 0, -0.5 -> -0, -1.5 -> -2; sum(q) = 129.
X_Q8 = [127.0, 2.5, 1.5, 0.5, -0.5, -1.5] + [0.0] * 26


def test_golden_act_q8_quantisation():
    q, d, s = ref.quantize_act_q8(torch.tensor([X_Q8, [2 * v for v in X_Q8]]))
    assert q[0, 0, :6].tolist() == [127, 2, 2, 0, 0, -2] and q[0, 0, 6:].abs().sum() == 0
    assert torch.equal(q[0], q[1])
    assert d.tolist() == [[1.0], [2.0]] and s.tolist() == [[129.0], [258.0]]


def test_golden_act_q8():
    x = torch.tensor([X_Q8, [2 * v for v in X_Q8], [0.0] * 32])
    # Q8_0, d = 0.5, w_j = j - 16: sum w q = -16*127 - 15*2 - 14*2 + 11*2 = -2068
    q8 = u8([fp16_bytes(F16_HALF) + [(i - 16) & 0xFF for i in range(32)]])
    # Q4_1, d = 0.25, m = -1, u_j = j, u_{16+j} = 15 - j: sum u q = 2 + 4 - 10 = -4, so
    # fma(-1, s, fma(0.25 d, -4, 0)) = -d - 129 d
    q41 = u8([fp16_bytes(F16_QUARTER) + fp16_bytes(F16_MINUS_ONE) +
              [j | ((15 - j) << 4) for j in range(16)]])
    # Q4_0, d = 2, low nibbles 15 (w = 14), high ones 8 (w = 0): sum (u - 8) q = 7 * 129
    q40 = u8([fp16_bytes(F16_TWO) + [0x8F] * 16])
    cases = [(q8, ops.GGML_Q8_0, [-1034.0, -2068.0, 0.0]),
             (q41, ops.GGML_Q4_1, [-130.0, -260.0, 0.0]),
             (q40, ops.GGML_Q4_0, [1806.0, 3612.0, 0.0])]
    for w, ggml_type, expected in cases:
        assert run(x, w, ggml_type, act_quant=8)[:, 0].tolist() == expected, ggml_type
        assert ref.linear_q8(x, w, ggml_type)[:, 0].tolist() == expected, ggml_type
    # the float path keeps the unrounded activations: 0.5 * (-2032 - 37.5 - 21 - 6.5 + 6 + 16.5)
    assert run(x[:1], q8, ops.GGML_Q8_0).item() == -1037.25


def test_act_quant_ignored_on_cuda(device):
    if device == "cpu":
        pytest.skip("CUDA only: act_quant is a CPU mode")
    gen = torch.Generator().manual_seed(12)
    w = packed(gen, 9, 64, ops.GGML_Q4_1).to(device)
    x = torch.randn(3, 64, generator=gen).to(device)
    assert torch.equal(run(x, w, ops.GGML_Q4_1, act_quant=8), run(x, w, ops.GGML_Q4_1))


def test_fma_reference_rounds_once():
    # a * b = 1 + 2^-11 + 2^-24 (exactly half an fp32 ulp above 1 + 2^-11): with c = 2^-70
    # the exact sum is above the tie, so a single rounding goes up, a double one to even.
    a = torch.tensor([1 + 2.0 ** -12])
    c = torch.tensor([2.0 ** -70])
    assert ref._fma_f32(a, a, c).item() == 1 + 2.0 ** -11 + 2.0 ** -23
    assert ref._fma_f32(a, a, -c).item() == 1 + 2.0 ** -11
    assert (a.double() * a.double() + c.double()).float().item() == 1 + 2.0 ** -11


@pytest.mark.parametrize("ggml_type", Q_TYPES, ids=Q_IDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x32", "xbf16"])
def test_act_q8_matches_reference_bitwise(ggml_type, x_dtype):
    gen = torch.Generator().manual_seed(40 + ggml_type)
    for k in (32, 64, 576):
        for n in (1, 7, 64, 300):
            w = packed(gen, n, k, ggml_type)
            x = (torch.randn(64, k, generator=gen) * torch.rand(64, 1, generator=gen) * 3)
            x = x.to(x_dtype)
            bias = torch.randn(n, generator=gen) if n % 2 else None
            expected = ref.linear_q8(x, w, ggml_type, bias)
            for m in (1, 2, 3, 4, 5, 8, 16, 64):
                got = run(x[64 - m:], w, ggml_type, bias, torch.float32, act_quant=8)
                assert torch.equal(bits(got), bits(expected[64 - m:])), (k, n, m)
            if x_dtype == torch.bfloat16:
                y16 = run(x, w, ggml_type, bias, act_quant=8)
                assert torch.equal(bits(y16), bits(expected.bfloat16())), (k, n)


@pytest.mark.parametrize("ggml_type", Q_TYPES, ids=Q_IDS)
def test_act_q8_error_within_quantisation_bound(ggml_type):
    # Each activation moves by at most d / 2 = amax / 254 of its block, so the q8 result is
    # within sum_b amax_b / 254 * sum_j |w_j| (plus fp32 rounding) of the float one.
    gen = torch.Generator().manual_seed(7)
    k, n = 576, 96
    w = packed(gen, n, k, ggml_type)
    x = torch.randn(16, k, generator=gen)
    x[:, ::50] *= 20  # outliers make coarse blocks
    dense = ref.dequantize(w, ggml_type).abs().reshape(n, k // 32, 32).sum(-1)  # [N, B]
    amax = x.abs().reshape(16, k // 32, 32).amax(-1)  # [M, B]
    bound = amax @ dense.T / 254 + 1e-4 * (x.abs() @ ref.dequantize(w, ggml_type).abs().T)
    err = (run(x, w, ggml_type, act_quant=8) - ref.linear(x, w, ggml_type)).abs()
    assert (err <= bound).all()
    assert err.max() > 0  # the mode is really on
    assert (err / bound).max() > 0.05  # and the bound is not vacuous


def test_act_q8_non_finite_row_is_nan_and_alone():
    gen = torch.Generator().manual_seed(8)
    w = packed(gen, 12, 64, ops.GGML_Q4_1)
    x = torch.randn(4, 64, generator=gen)
    x[1, 40] = float("inf")
    x[2, 0] = float("nan")
    y = run(x, w, ops.GGML_Q4_1, act_quant=8)
    assert y[1:3].isnan().all()
    assert torch.equal(bits(y[[0, 3]]), bits(run(x[[0, 3]], w, ops.GGML_Q4_1, act_quant=8)))
    assert torch.equal(y.isnan(), ref.linear_q8(x, w, ops.GGML_Q4_1).isnan())


def test_act_q8_ignored_for_plain_types():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 64, generator=gen)
    for ggml_type in (ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16):
        w = packed(gen, 5, 64, ggml_type)
        assert torch.equal(run(x, w, ggml_type, act_quant=8), run(x, w, ggml_type))
    with pytest.raises(ValueError, match="needs Q4_0, Q4_1 or Q8_0"):
        ref.linear_q8(x, w, ops.GGML_BF16)


def test_packed_weight_act_quant_default():
    gen = torch.Generator().manual_seed(10)
    pw = PackedWeight.from_float(torch.randn(8, 64, generator=gen), ops.GGML_Q4_1)
    q8 = pw.with_act_quant(8)
    assert q8.data is pw.data and pw.act_quant == 0 and q8.to("cpu").act_quant == 8
    x = torch.randn(2, 64, generator=gen)
    assert torch.equal(q8.linear(x), run(x, pw.data, pw.ggml_type, act_quant=8))
    assert torch.equal(q8.linear(x, act_quant=0), pw.linear(x))
    assert not torch.equal(q8.linear(x), pw.linear(x))
    with pytest.raises(ValueError, match="act_quant must be 0 or 8"):
        pw.with_act_quant(4)


def test_model_switch_keeps_verify_equal_to_steps():
    from model_fixtures import random_weights, tiny_config

    from adaeagle_ext.models.llama import build_model
    from adaeagle_ext.models.packed_layers import set_act_quant
    from adaeagle_ext.models.tree_inputs import chain_inputs

    config = tiny_config(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=192,
                         vocab_size=96, tie_word_embeddings=True, num_layers=2)
    weights = random_weights(config, 3)
    packs = {k: PackedWeight.from_float(w, ops.GGML_Q4_1) for k, w in weights.items()
             if w.dim() == 2}
    model = build_model(config, {k: w for k, w in weights.items() if k not in packs},
                        torch.float32, packs)
    tokens = torch.randint(0, 96, (12,), generator=torch.Generator().manual_seed(4))

    def forward(chunk, prefix, cache):
        lens = torch.tensor([prefix], dtype=torch.int32)
        pos, indptr, mask = chain_inputs(torch.tensor([chunk.numel()]), lens)
        return model(chunk, pos, indptr, mask, lens, cache)[0]

    float_logits = forward(tokens, 0, model.new_cache(1, 16))
    # 7 linears and the fused q/k/v and gate/up rows a layer, the tied head
    assert set_act_quant(model, 8) == 2 * 9 + 1
    together = forward(tokens, 0, model.new_cache(1, 16))
    steps = model.new_cache(1, 16)
    for i in range(tokens.numel()):
        assert torch.equal(forward(tokens[i:i + 1], i, steps)[0], together[i]), i
    assert not torch.equal(together, float_logits)
    assert (together - float_logits).abs().max() < 0.1 * float_logits.abs().max()
    set_act_quant(model, 0)
    assert torch.equal(forward(tokens, 0, model.new_cache(1, 16)), float_logits)


# Per type: block bytes with d = 0.25 (Q4_1: m = -1) and the most extreme weights (nibbles 15;
# Q8_0: -128), and the weight value w * d and m that each block then holds.
EXTREME_BLOCKS = {
    ops.GGML_Q4_0: (fp16_bytes(F16_QUARTER) + [0xFF] * 16, 7.0, 0.0),
    ops.GGML_Q4_1: (fp16_bytes(F16_QUARTER) + fp16_bytes(F16_MINUS_ONE) + [0xFF] * 16, 15.0,
                    -1.0),
    ops.GGML_Q8_0: (fp16_bytes(F16_QUARTER) + [0x80] * 32, -128.0, 0.0),
}


@pytest.mark.parametrize("ggml_type", list(EXTREME_BLOCKS), ids=["Q4_0", "Q4_1", "Q8_0"])
def test_act_q8_largest_partial_sums(ggml_type):
    """The most extreme weights against activations of +-127: the largest integer partial sums
    of every tile (Q4: 8 groups x 2 x 15 x 127 = 30480 in int16; Q8_0: 2 x 128 x 127 per
    pair), exact for every row count."""
    block, w_units, m = EXTREME_BLOCKS[ggml_type]
    w = u8([block * 18] * 11)  # 11 rows of K = 576
    signs = torch.tensor([1.0 if (i // 32) % 3 else -1.0 for i in range(576)])
    x = torch.stack([signs * (1 + r % 5) for r in range(20)])  # q = +-127 in every block
    expected = ref.linear_q8(x, w, ggml_type)
    block_signs = float(signs.view(18, 32)[:, 0].sum())
    for r in (0, 3):
        scale = 1 + r % 5  # per block: 0.25 * w_units * 32 * scale, plus m * 32 * scale
        want = block_signs * scale * 32 * (0.25 * w_units + m)
        assert expected[r, 0].item() == pytest.approx(want, rel=1e-6)
    for rows in (1, 4, 5, 8, 12, 16, 20):
        got = run(x[:rows], w, ggml_type, act_quant=8)
        assert torch.equal(bits(got), bits(expected[:rows])), rows
