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


def run(x, weight, ggml_type, bias=None, out_dtype=None):
    return ops.linear(x, weight, ggml_type, bias, out_dtype=out_dtype)


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


def _row_by_row(x, w, ggml_type):
    return torch.cat([run(x[i:i + 1].clone(), w, ggml_type) for i in range(x.shape[0])])


@pytest.mark.parametrize("ggml_type", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("isa", ["auto", "scalar"])
def test_batch_invariance(ggml_type, isa, monkeypatch):
    monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", isa)
    gen = torch.Generator().manual_seed(11 + ggml_type)
    k, n = (576, 300) if isa == "auto" else (96, 37)
    w = packed(gen, n, k, ggml_type)
    x = torch.randn(64, k, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = run(x, w, ggml_type)
        torch.set_num_threads(1)
        batch_one_thread = run(x, w, ggml_type)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(batch), bits(batch_one_thread))
    assert torch.equal(bits(batch), bits(_row_by_row(x, w, ggml_type)))
    # every sub-batch size, so that every tile shape and remainder is exercised
    start = 0
    for size in (1, 2, 3, 4, 5, 6, 7, 9, 27):
        part = run(x[start:start + size], w, ggml_type)
        assert torch.equal(bits(part), bits(batch[start:start + size])), size
        start += size
    xb = x.bfloat16()
    assert torch.equal(bits(run(xb, w, ggml_type)), bits(_row_by_row(xb, w, ggml_type)))


@pytest.mark.skipif(not has_avx2(), reason="needs AVX2/FMA/F16C")
@pytest.mark.parametrize("ggml_type", TYPES, ids=TYPE_IDS)
def test_scalar_and_avx2_agree_bitwise(ggml_type, monkeypatch):
    # Both ISAs implement the one order of csrc/cpu/linear.h, so they agree to the bit.
    gen = torch.Generator().manual_seed(5)
    for k in (32, 40, 200) if ggml_type in (ops.GGML_F32, ops.GGML_F16, ops.GGML_BF16) else (
            32, 192):
        w = packed(gen, 19, k, ggml_type)
        x = torch.randn(6, k, generator=gen)
        bias = torch.randn(19, generator=gen)
        monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "avx2")
        fast = run(x, w, ggml_type, bias)
        monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "scalar")
        slow = run(x, w, ggml_type, bias)
        assert torch.equal(bits(fast), bits(slow)), k


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
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


def test_bad_isa_setting_raises(monkeypatch):
    w = packed(torch.Generator().manual_seed(0), 2, 32, ops.GGML_Q8_0)
    monkeypatch.setenv("ADAEAGLE_LINEAR_ISA", "sse9")
    with pytest.raises(RuntimeError, match="ADAEAGLE_LINEAR_ISA must be auto, avx2 or scalar"):
        run(torch.ones(1, 32), w, ops.GGML_Q8_0)
