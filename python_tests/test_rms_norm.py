"""rms_norm: hand-computed goldens, random rows against ref.py, batch invariance, in place,
opcheck, bad input, and the model's RMSNorm module."""

from __future__ import annotations

import pytest
import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.models.llama import RMSNorm


def t(values, dtype, device):
    return torch.tensor(values, dtype=dtype, device=device)


def test_golden_float32(device):
    # sum of squares 25, mean 6.25, r = 1 / 2.5 = 0.4: x r = [0.4, 0.8, 0.8, 1.6]
    x = t([[1.0, 2.0, 2.0, 4.0]], torch.float32, device)
    w = t([1.0, 0.5, 2.0, -1.0], torch.float32, device)
    y = ops.rms_norm(x, w, 0.0)
    assert torch.equal(y.cpu(), torch.tensor([[0.4, 0.4, 1.6, -1.6]]))


def test_golden_bfloat16_rounds_twice(device):
    # x r rounded to bf16 first (0.4 -> 0.400390625, 0.8 -> 0.80078125, 1.6 -> 1.6015625),
    # then times w (exact here)
    x = t([[1.0, 2.0, 2.0, 4.0]], torch.bfloat16, device)
    w = t([1.0, 0.5, 2.0, -1.0], torch.bfloat16, device)
    y = ops.rms_norm(x, w, 0.0).float().cpu()
    assert y.tolist() == [[0.400390625, 0.400390625, 1.6015625, -1.6015625]]


def test_golden_eps(device):
    # mean 1 plus eps 3: r = 0.5 exactly
    x = t([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]], torch.float32, device)
    w = t([2.0, 2.0, 4.0, 4.0], torch.float32, device)
    y = ops.rms_norm(x, w, 3.0).cpu()
    assert y.tolist() == [[1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0]]


def dtypes_for(device):
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


@pytest.mark.parametrize("n", [1, 2, 5, 64])
@pytest.mark.parametrize("h", [13, 576, 1000])
def test_matches_reference(device, n, h):
    gen = torch.Generator().manual_seed(n * 1000 + h)
    for dtype in dtypes_for(device):
        x = (torch.randn(n, h, generator=gen) * 3).to(dtype).to(device)
        w = (torch.randn(h, generator=gen) * 0.5 + 1).to(dtype).to(device)
        got = ops.rms_norm(x, w, 1e-5).float().cpu()
        want = ref.rms_norm(x.cpu().float(), w.cpu().float(), 1e-5)
        if dtype == torch.float32:
            # only the order of the sum of squares differs from torch's mean
            torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)
            continue
        want = ref.rms_norm(x.cpu(), w.cpu(), 1e-5).float()
        # r differs from torch's by an ulp or so, which moves a rounding to the 16-bit dtype
        # (of x r, then of w times it) by one step in a few elements at most
        ulp = want.abs().clamp(min=1e-3) * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)
        off = (got - want).abs()
        assert bool((off <= 2 * ulp).all()), (dtype, float(off.max()))
        assert float((off > 0).float().mean()) < 0.02, dtype


def test_row_alone_equals_row_in_batch(device):
    gen = torch.Generator().manual_seed(7)
    for dtype in dtypes_for(device):
        x = (torch.randn(64, 576, generator=gen) * 2).to(dtype).to(device)
        w = (torch.randn(576, generator=gen) + 1).to(dtype).to(device)
        batch = ops.rms_norm(x, w, 1e-5)
        for i in (0, 17, 63):
            assert torch.equal(ops.rms_norm(x[i:i + 1], w, 1e-5), batch[i:i + 1])
            assert torch.equal(ops.rms_norm(x[i:i + 5], w, 1e-5), batch[i:i + 5])


def test_leading_dims_and_in_place(device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, generator=gen).to(torch.bfloat16).to(device)
    w = torch.randn(40, generator=gen).to(torch.bfloat16).to(device)
    want = ops.rms_norm(x.reshape(6, 40), w, 1e-6).reshape(2, 3, 40)
    assert torch.equal(ops.rms_norm(x, w, 1e-6), want)
    buf = torch.full((8, 40), 7.0, dtype=torch.bfloat16, device=device)
    buf[1:7] = x.reshape(6, 40)
    inner = buf[1:7]
    assert ops.rms_norm(inner, w, 1e-6, out=inner) is inner
    assert torch.equal(inner, want.reshape(6, 40))
    assert bool((buf[0] == 7).all()) and bool((buf[7] == 7).all())  # untouched


def test_empty(device):
    x = torch.empty(0, 16, device=device)
    assert ops.rms_norm(x, torch.ones(16, device=device), 1e-6).shape == (0, 16)


def test_opcheck():
    x, w = torch.randn(3, 24), torch.randn(24)
    torch.library.opcheck(torch.ops.adaeagle.rms_norm, (x, w, 1e-6, torch.empty(3, 24)))
    xb, wb = x.bfloat16(), w.bfloat16()
    torch.library.opcheck(torch.ops.adaeagle.rms_norm, (xb, wb, 1e-6, torch.empty_like(xb)))


def test_bad_arguments_raise():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        ops.rms_norm(x.to(torch.int32), w, 1e-6)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16 on this device"):
        ops.rms_norm(x.half(), w.half(), 1e-6)
    with pytest.raises(RuntimeError, match=r"weight \(same dtype as x\) must be BFloat16"):
        ops.rms_norm(x.bfloat16(), w, 1e-6)
    with pytest.raises(RuntimeError, match=r"weight.size\(0\) must be 8"):
        ops.rms_norm(x, torch.randn(9), 1e-6)
    with pytest.raises(RuntimeError, match="weight .* must be contiguous"):
        ops.rms_norm(x, torch.randn(16)[::2], 1e-6)
    with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
        ops.rms_norm(x, w, -1.0)
    with pytest.raises(ValueError, match="out must have x's shape"):
        ops.rms_norm(x, w, 1e-6, out=torch.empty(2, 9))
    with pytest.raises(RuntimeError, match="out .* must be Float"):
        torch.ops.adaeagle.rms_norm(x, w, 1e-6, torch.empty(2, 8, dtype=torch.bfloat16))
    buf = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="refer to a single memory location"):  # shifted
        torch.ops.adaeagle.rms_norm(buf[0:2], w, 1e-6, buf[1:3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_uses_the_op_and_keeps_autograd(dtype):
    norm = RMSNorm(32, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 32))
    x = torch.randn(4, 32).to(dtype)
    with torch.no_grad():
        assert torch.equal(norm(x), ops.rms_norm(x, norm.weight, 1e-5))
    xg = x.clone().requires_grad_(True)
    y = norm(xg)  # the PyTorch formula: gradients flow
    y.float().sum().backward()
    assert xg.grad is not None and norm.weight.grad is not None
    torch.testing.assert_close(y.detach().float(), ref.rms_norm(x, norm.weight.detach(),
                                                                1e-5).float())
