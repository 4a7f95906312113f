"""ldlp_mlp: hand-computed goldens, random nets against ref.py, the LDLP module, opcheck, bad
input."""

from __future__ import annotations

import pytest
import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.drafters.ldlp import LDLP


def f32(values):
    return torch.tensor(values, dtype=torch.float32)


def zero_weights(hidden_size: int, width: int) -> ops.LdlpWeights:
    return ops.LdlpWeights(
        torch.zeros(width, 2 * hidden_size), torch.zeros(width),
        torch.zeros(3, width, width), torch.zeros(3, width), torch.zeros(1, width), torch.zeros(1),
    )


def on(weights: ops.LdlpWeights, device: str) -> ops.LdlpWeights:
    return weights.to(device)


def golden_weights() -> ops.LdlpWeights:
    """H=2, W=64, mostly zero, so that y can be worked out by hand:
    x0 = e0, x1 = h1, x2 = (e0 + e1) / 2, x3 = 1 (bias); block 0 adds silu(2 x3 - 1) to x4;
    block 2 adds silu(0.5) to x0; y = x0 + x1 + 2 x2 + x3 / 4 - x4 + 0.75."""
    w = zero_weights(2, 64)
    w.w_in[0, 0] = 1.0
    w.w_in[1, 3] = 1.0
    w.w_in[2, :2] = 0.5
    w.b_in[3] = 1.0
    w.w_blocks[0, 4, 3] = 2.0
    w.b_blocks[0, 4] = -1.0
    w.b_blocks[2, 0] = 0.5
    w.w_out[0, :5] = f32([1.0, 1.0, 2.0, 0.25, -1.0])
    w.b_out[0] = 0.75
    return w


GOLDEN_EMB = [[3.0, 4.0], [1.0, -1.0], [-2.0, 0.5]]
GOLDEN_HIDDEN = [[0.0, -2.0], [6.0, 8.0], [1.0, 0.0]]
# Worked out by hand (eps = 1e-6): row 0 has e = (3, 4) / sqrt(12.5), h = (0, -2) / sqrt(2), so
# x0 = 0.8485281 + silu(0.5) = 1.1597578, x1 = -1.4142132, x2 = 0.9899495, x4 = silu(1).
GOLDEN_RAW = [1.9943849, 2.7115414, -1.8208085]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_hand_computed(device, dtype):
    # every golden input and weight is exact in bfloat16, so both dtypes give the same numbers
    emb = torch.tensor(GOLDEN_EMB, dtype=dtype, device=device)
    hidden = torch.tensor(GOLDEN_HIDDEN, dtype=dtype, device=device)
    weights = golden_weights().to(device=device, dtype=dtype)
    out = ops.ldlp_mlp(emb, hidden, weights, 8, 1e-6, return_raw=True, return_max=True)
    torch.testing.assert_close(out.raw.cpu(), f32(GOLDEN_RAW), rtol=0, atol=2e-6)
    assert out.lengths.tolist() == [2, 3, 0]
    assert out.max_len.tolist() == [3]
    clamped = ops.ldlp_mlp(emb, hidden, weights, 2, 1e-6, return_max=True)
    assert clamped.lengths.tolist() == [2, 2, 0]
    assert clamped.max_len.tolist() == [2]
    assert clamped.raw is None


def sign_rows():
    """emb rows (+-1, +-1) with hidden (1, 1): with eps = 1e-30 both normalise exactly to
    themselves, so y is exact."""
    emb = f32([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    return emb, torch.ones(4, 2)


@pytest.mark.parametrize(
    "head, bias, raw, lengths",
    [
        # y = e0 + 2 e1 + 0.5: 3.5 -> 4, -0.5 -> 0, 1.5 -> 2, -2.5 -> 0
        ([1.0, 2.0, 0.0], 0.5, [3.5, -0.5, 1.5, -2.5], [4, 0, 2, 0]),
        # y = e0 + e1 + 0.5: 2.5 -> 2 and 0.5 -> 0 (half to even, like torch.round)
        ([1.0, 1.0, 0.0], 0.5, [2.5, 0.5, 0.5, -1.5], [2, 0, 0, 0]),
        # y = e0 + 4 h0 + 0.5: 5.5 -> 6, 3.5 -> 4
        ([1.0, 0.0, 4.0], 0.5, [5.5, 5.5, 3.5, 3.5], [6, 6, 4, 4]),
    ],
)
def test_round_half_to_even(device, head, bias, raw, lengths):
    weights = zero_weights(2, 64)
    weights.w_in[0, 0] = weights.w_in[1, 1] = weights.w_in[2, 2] = 1.0
    weights.w_out[0, :3] = f32(head)
    weights.b_out[0] = bias
    emb, hidden = sign_rows()
    out = ops.ldlp_mlp(emb.to(device), hidden.to(device), on(weights, device), 8, 1e-30,
                       return_raw=True)
    assert out.raw.tolist() == raw
    assert out.lengths.tolist() == lengths
    assert lengths == torch.round(f32(raw)).clamp(0, 8).int().tolist()


def test_clamp_at_zero_and_k_max(device):
    weights = zero_weights(2, 64)
    weights.w_in[0, 0] = 1.0
    weights.w_out[0, 0] = 40.0
    weights.b_out[0] = 5.0
    emb, hidden = sign_rows()  # y = 40 e0 + 5: 45, 45, -35, -35
    args = (emb.to(device), hidden.to(device), on(weights, device))
    for k_max, expected in [(0, [0, 0, 0, 0]), (3, [3, 3, 0, 0]), (8, [8, 8, 0, 0]),
                            (100, [45, 45, 0, 0])]:
        out = ops.ldlp_mlp(*args, k_max, 1e-30, return_max=True)
        assert out.lengths.tolist() == expected
        assert out.max_len.tolist() == [max(expected)]


def test_nan_maps_to_zero(device):
    emb, hidden = sign_rows()
    emb[1, 0] = float("nan")
    weights = zero_weights(2, 64)
    weights.w_in[0, 0] = 1.0
    weights.w_out[0, 0] = 1.0
    weights.b_out[0] = 3.0
    out = ops.ldlp_mlp(emb.to(device), hidden.to(device), on(weights, device), 8, 1e-30,
                       return_raw=True)
    assert out.lengths.tolist() == [4, 0, 2, 2]
    assert torch.isnan(out.raw[1])
    assert ref.ldlp_mlp(emb, hidden, *weights, 8, 1e-30)[0].tolist() == [4, 0, 2, 2]


def random_net(hidden_size: int, width: int, seed: int) -> LDLP:
    """A randomly initialised LDLP whose head is rescaled so that raw spreads like N(3, 5^2) over
    random inputs: every clamp and many roundings are exercised."""
    torch.manual_seed(seed)
    net = LDLP(hidden_size, width)
    with torch.no_grad():
        y = net(torch.randn(64, hidden_size), torch.randn(64, hidden_size))
        scale = 5.0 / y.std()
        net.head.weight.mul_(scale)
        net.head.bias.copy_((net.head.bias - y.mean()) * scale + 3.0)
    return net


def check_against_ref(device, net, emb, hidden, weights, k_max, rtol, atol):
    out = ops.ldlp_mlp(emb.to(device), hidden.to(device), weights.to(device), k_max, net.eps,
                       return_raw=True, return_max=True)
    lengths, raw, max_len = ref.ldlp_mlp(emb, hidden, *weights, k_max, net.eps)
    got_raw = out.raw.cpu()
    torch.testing.assert_close(got_raw, raw, rtol=rtol, atol=atol)
    # lengths follow the op's own raw exactly, and ref's wherever ref's raw is not a near tie
    assert torch.equal(out.lengths.cpu(), torch.round(got_raw).clamp(0, k_max).int())
    clear = ((raw - raw.floor() - 0.5).abs() > 1e-3) | (raw < -1) | (raw > k_max + 1)
    assert torch.equal(out.lengths.cpu()[clear], lengths[clear])
    assert out.max_len.item() == out.lengths.max().item()
    return raw


@pytest.mark.parametrize("hidden_size", [16, 576])
@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(device, hidden_size, width, dtype):
    net = random_net(hidden_size, width, seed=hidden_size + width)
    weights = ops.LdlpWeights.from_module(net.to(dtype))
    gen = torch.Generator().manual_seed(width)
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    seen = set()
    for batch in range(1, 9):
        k_max = (0, 3, 8)[batch % 3]
        emb = torch.randn(batch, hidden_size, generator=gen).to(dtype)
        hidden = (4 * torch.randn(batch, hidden_size, generator=gen)).to(dtype)
        raw = check_against_ref(device, net, emb, hidden, weights, k_max, tol, tol)
        seen.update(torch.round(raw).clamp(-1, 9).int().tolist())
    assert {-1, 9} <= seen and len(seen) >= 6  # both clamps and several lengths were exercised


def test_odd_sizes_and_mixed_storage(device):
    # H and W not multiples of the vector width; fp32 inputs with bf16 weights and vice versa
    net = random_net(37, 99, seed=5)
    gen = torch.Generator().manual_seed(1)
    emb, hidden = torch.randn(6, 37, generator=gen), torch.randn(6, 37, generator=gen)
    for act, wt in [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                    (torch.bfloat16, torch.float32)]:
        weights = net.weights().to(wt)
        check_against_ref(device, net, emb.to(act), hidden.to(act), weights, 8, 1e-5, 1e-5)


def test_large_batch_is_row_independent(device):
    # B = 19 spreads row tiles over threads; every row must equal the same row computed alone
    net = random_net(64, 128, seed=7)
    weights = net.weights().to(device)
    gen = torch.Generator().manual_seed(2)
    emb, hidden = torch.randn(19, 64, generator=gen), torch.randn(19, 64, generator=gen)
    full = ops.ldlp_mlp(emb.to(device), hidden.to(device), weights, 8, return_raw=True)
    torch.testing.assert_close(full.raw.cpu(), ref.ldlp_mlp(emb, hidden, *weights.to("cpu"), 8,
                                                            1e-6)[1], rtol=1e-5, atol=1e-5)
    for b in (0, 5, 18):
        one = ops.ldlp_mlp(emb[b:b + 1].to(device), hidden[b:b + 1].to(device), weights, 8,
                           return_raw=True)
        assert one.raw.item() == full.raw[b].item()


def test_module_forward_matches_op(device):
    net = random_net(576, 256, seed=3)
    gen = torch.Generator().manual_seed(3)
    emb, hidden = torch.randn(5, 576, generator=gen), 3 * torch.randn(5, 576, generator=gen)
    y = net(emb, hidden)
    assert y.shape == (5,) and y.requires_grad
    net = net.to(device)
    out = ops.ldlp_mlp(emb.to(device), hidden.to(device), net.weights(), 8, return_raw=True)
    torch.testing.assert_close(out.raw.cpu(), y.detach(), rtol=1e-5, atol=1e-5)
    predicted = net.predict(emb.to(device), hidden.to(device), 8)
    assert torch.equal(predicted.cpu(), out.lengths.cpu())


def test_module_weights_map_and_cache():
    net = LDLP(8, 64)
    names = {n for n, _ in net.named_parameters()}
    assert names == {"proj.weight", "proj.bias", "head.weight", "head.bias",
                     *(f"blocks.{i}.{p}" for i in range(3) for p in ("weight", "bias"))}
    w = net.weights()
    assert w.w_in.shape == (64, 16) and w.w_blocks.shape == (3, 64, 64)
    assert w.b_blocks.shape == (3, 64) and w.w_out.shape == (1, 64) and w.b_out.shape == (1,)
    assert torch.equal(w.w_blocks[1], net.blocks[1].weight)
    assert net.weights() is w  # cached while nothing changes
    with torch.no_grad():
        net.blocks[1].weight.add_(1.0)
    fresh = net.weights()
    assert fresh is not w and torch.equal(fresh.w_blocks[1], net.blocks[1].weight)
    sd_weights = ops.LdlpWeights.from_state_dict(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(sd_weights, fresh, strict=True))


def test_wrapper_accepts_dicts():
    net = random_net(16, 64, seed=1)
    emb, hidden = torch.randn(3, 16), torch.randn(3, 16)
    expected = ops.ldlp_mlp(emb, hidden, net.weights(), 8).lengths
    by_field = ops.ldlp_mlp(emb, hidden, net.weights()._asdict(), 8).lengths
    by_state = ops.ldlp_mlp(emb, hidden, net.state_dict(), 8).lengths
    assert torch.equal(by_field, expected) and torch.equal(by_state, expected)


def test_out_variant_and_optional_outputs():
    net = random_net(16, 64, seed=2)
    weights = net.weights()
    emb, hidden = torch.randn(4, 16), torch.randn(4, 16)
    full = ops.ldlp_mlp(emb, hidden, weights, 8, return_raw=True, return_max=True)
    out = ops.LdlpOutput(torch.full((4,), -7, dtype=torch.int32), None,
                         torch.full((1,), -7, dtype=torch.int32))
    result = ops.ldlp_mlp(emb, hidden, weights, 8, out=out)
    assert result.lengths.data_ptr() == out.lengths.data_ptr() and result.raw is None
    assert torch.equal(out.lengths, full.lengths)
    assert torch.equal(out.max_len, full.max_len)
    only_raw = ops.ldlp_mlp(emb, hidden, weights, 8, return_raw=True)
    assert torch.equal(only_raw.raw, full.raw) and only_raw.max_len is None


def test_empty_batch(device):
    weights = zero_weights(4, 64).to(device)
    empty = torch.empty(0, 4, device=device)
    out = ops.ldlp_mlp(empty, empty, weights, 8, return_raw=True,
                       out=ops.LdlpOutput(torch.empty(0, dtype=torch.int32, device=device),
                                          torch.empty(0, device=device),
                                          torch.full((1,), 5, dtype=torch.int32, device=device)))
    assert out.lengths.shape == (0,) and out.max_len.tolist() == [0]


@pytest.mark.parametrize("with_optional", [True, False])
def test_opcheck(with_optional):
    net = random_net(16, 64, seed=4)
    emb, hidden = torch.randn(3, 16), torch.randn(3, 16)
    optional = ((torch.empty(3), torch.empty(1, dtype=torch.int32)) if with_optional
                else (None, None))
    torch.library.opcheck(
        torch.ops.adaeagle.ldlp_mlp,
        (emb, hidden, *net.weights(), 8, 1e-6, torch.empty(3, dtype=torch.int32), *optional),
    )


def bad_call(**changes):
    """Calls the raw op with H=4, W=64, B=2 after replacing some arguments."""
    args = dict(
        emb=torch.randn(2, 4), hidden=torch.randn(2, 4), **zero_weights(4, 64)._asdict(),
        k_max=8, eps=1e-6, lengths=torch.empty(2, dtype=torch.int32), raw=torch.empty(2),
        max_len=torch.empty(1, dtype=torch.int32),
    )
    args.update(changes)
    torch.ops.adaeagle.ldlp_mlp(*args.values())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(w_in=torch.zeros(64, 6)), "w_in.size\\(1\\) must be 8"),
        (dict(w_blocks=torch.zeros(2, 64, 64)), "w_blocks.size\\(0\\) must be 3"),
        (dict(w_blocks=torch.zeros(3, 64, 32)), "w_blocks.size\\(2\\) must be 64"),
        (dict(w_blocks=torch.zeros(64, 64)), "w_blocks .* must have 3 dimension"),
        (dict(b_blocks=torch.zeros(3, 63)), "b_blocks.size\\(1\\) must be 64"),
        (dict(b_in=torch.zeros(64, dtype=torch.bfloat16)),
         "b_in \\(same dtype as w_in\\) must be Float"),
        (dict(w_out=torch.zeros(2, 64)), "w_out.size\\(0\\) must be 1"),
        (dict(b_out=torch.zeros(2)), "b_out.size\\(0\\) must be 1"),
        (dict(hidden=torch.randn(2, 4, dtype=torch.bfloat16)), "hidden \\(same dtype as emb\\)"),
        (dict(hidden=torch.randn(3, 4)), "hidden.size\\(0\\) must be 2"),
        (dict(hidden=torch.randn(2, 5)), "hidden.size\\(1\\) must be 4"),
        (dict(emb=torch.randn(2, 4, dtype=torch.float16)), "emb must be float32 or bfloat16"),
        (dict(emb=torch.randn(4, 2).T), "emb must be contiguous"),
        (dict(w_in=torch.zeros(1025, 8)), "width W\\) must be in \\[1, 1024\\]"),
        (dict(k_max=-1), "k_max must be in \\[0, 2\\^31\\)"),
        (dict(eps=0.0), "eps must be > 0"),
        (dict(eps=-1e-6), "eps must be > 0"),
        (dict(lengths=torch.empty(2, dtype=torch.int64)), "lengths must be Int"),
        (dict(lengths=torch.empty(3, dtype=torch.int32)), "lengths.size\\(0\\) must be 2"),
        (dict(raw=torch.empty(1)), "raw.size\\(0\\) must be 2"),
        (dict(max_len=torch.empty(2, dtype=torch.int32)), "max_len.size\\(0\\) must be 1"),
    ],
)
def test_bad_arguments_raise(changes, message):
    with pytest.raises(RuntimeError, match=message):
        bad_call(**changes)


def test_module_rejects_bad_width():
    with pytest.raises(ValueError, match="width must be in"):
        LDLP(16, 2048)
