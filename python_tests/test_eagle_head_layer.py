"""eagle_head_layer: a hand-built golden, bitwise equality with the head's op-by-op path (refresh
and feed calls, fp32 and bf16, with and without q/k/v bias), agreement with ref.py, untouched
cache rows, a row alone against the row in a batch, opcheck and bad input."""

from __future__ import annotations

import pytest
import torch
from composed_op_fixtures import check_against_reference, cpu_copy
from eagle_fixtures import random_head
from model_fixtures import ours, random_weights, tiny_config

from adaeagle_ext import ops, ref
from adaeagle_ext.drafters import eagle_head
from adaeagle_ext.models.llama import rope_cos_sin
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs
from adaeagle_ext.packed import PackedWeight


def packed(w: torch.Tensor, ggml_type: int = ops.GGML_F32) -> torch.Tensor:
    return PackedWeight.from_float(w, ggml_type).data


def golden_args(dtype, device):
    """hidden 64 = one head of 64 (one KV head), intermediate 32, F32 weights, one node at
    position 0 (cos 1, sin 0). embed[1] = +-1 signs, features 0, fc = [I | I]: x = signs.
    q/k/v = x; attention over itself alone = v = x; o = identity: x -> 2x (rms 2, so with norm
    weight 1 and eps 0 the normed row is x again); gate = 20 * x[0] = 20 (silu(20) = 20 in fp32
    and bf16), up = x[:32]; down = 0.25 on the first 32 outputs: + 5 x[:32]. So out = 7 x on
    dims 0-31 and 2 x on dims 32-63."""
    eye = torch.eye(64)
    gate = torch.zeros(32, 64)
    gate[:, 0] = 20.0
    down = torch.zeros(64, 32)
    down[:32] = 0.25 * torch.eye(32)
    weights = [packed(torch.cat([eye, eye], dim=1)), packed(torch.cat([eye, eye, eye])),
               packed(eye), packed(torch.cat([gate, eye[:32]])), packed(down)]
    signs = torch.tensor([1.0] + [(-1.0) ** (j // 3) for j in range(1, 64)])
    embed = torch.stack([torch.zeros(64), signs, -signs])
    i32 = dict(dtype=torch.int32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return dict(
        tokens=torch.ones(1, **i64), features=torch.zeros(1, 64, dtype=dtype, device=device),
        embed=embed.to(dtype).to(device), weights=[w.to(device) for w in weights],
        ggml_types=[0] * 5, act_quants=[0] * 5, biases=[None] * 3,
        norm=torch.ones(64, dtype=dtype, device=device),
        cos=torch.ones(1, 64, dtype=dtype, device=device),
        sin=torch.zeros(1, 64, dtype=dtype, device=device),
        kv_cache=torch.zeros(1, 2, 1, 4, 1, 64, dtype=dtype, device=device),
        req=torch.zeros(1, **i64), rows=torch.zeros(1, **i64),
        prefix_lens=torch.zeros(1, **i32), tree_indptr=torch.tensor([0, 1], **i32),
        mask_bits=torch.ones(1, **i64), new_index=None, num_heads=1, num_kv_heads=1, eps=0.0,
        scale=0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_one_node(device, dtype):
    args = golden_args(dtype, device)
    out = ops.eagle_head_layer(**args)
    signs = args["embed"][1].float().cpu()
    assert out[0].float().cpu().tolist() == (signs * torch.tensor([7.0] * 32 + [2.0] * 32)).tolist()
    cache = args["kv_cache"].float().cpu()
    assert cache[0, 0, 0, 0, 0].tolist() == signs.tolist()  # k = x (cos 1, sin 0)
    assert cache[0, 1, 0, 0, 0].tolist() == signs.tolist()  # v = x
    assert int((cache[0, :, 0, 1:] != 0).sum()) == 0  # rows 1-3 untouched


def test_golden_new_index_attends_to_the_cached_node(device):
    """Node 0 (K/V cached by an earlier call: k = 0, v = -signs) and new node 1 (its child):
    equal scores, so attention = (v0 + v1) / 2 = 0, o adds nothing, the norm of x = signs is
    signs, and out = 6 x on dims 0-31 and x on dims 32-63."""
    args = golden_args(torch.float32, device)
    signs = args["embed"][1].cpu()
    args["kv_cache"][0, 1, 0, 0, 0] = -signs.to(device)
    args.update(rows=torch.ones(1, dtype=torch.int64, device=device),
                tree_indptr=torch.tensor([0, 2], dtype=torch.int32, device=device),
                mask_bits=torch.tensor([1, 3], dtype=torch.int64, device=device),
                new_index=torch.ones(1, dtype=torch.int64, device=device))
    # Zero q rows in the q/k/v weight: both scores are 0.
    w = torch.cat([torch.zeros(64, 64), torch.eye(64), torch.eye(64)])
    args["weights"][1] = packed(w).to(device)
    out = ops.eagle_head_layer(**args)
    assert out[0].cpu().tolist() == (signs * torch.tensor([6.0] * 32 + [1.0] * 32)).tolist()
    assert args["kv_cache"][0, 1, 0, 1, 0].cpu().tolist() == signs.tolist()


def target64(dtype):
    """A tiny target with head dim 64 (the attention kernel takes 64 and 128)."""
    config = tiny_config(vocab_size=64, hidden_size=128, num_heads=2, num_kv_heads=1,
                         intermediate_size=96)
    return ours(config, random_weights(config, seed=3), dtype)


def refresh_then_feed(head, seed: int = 0):
    """A 7-pair refresh chain, then two feed levels over a 2-request batch with new_index
    subsets: returns every output and the cache."""
    g = torch.Generator().manual_seed(seed)
    hidden = head.config.hidden_size
    cache = head.new_cache(2, 32)
    zero = torch.zeros(2, dtype=torch.int32)
    pos, indptr, bits = chain_inputs(torch.tensor([7, 4]), zero)
    outs = [head.forward_tree(torch.randint(0, 64, (11,), generator=g),
                              torch.randn(11, hidden, generator=g), pos, cache, zero, indptr,
                              bits)]
    prefix = torch.tensor([7, 4], dtype=torch.int32)
    parents = torch.tensor([-1, 0, 0, 1, -1, 0, 0], dtype=torch.int32)
    ptr = torch.tensor([0, 4, 7], dtype=torch.int32)
    t_pos, t_bits = tree_inputs(parents, ptr, prefix)
    for new in ([0, 4], [1, 2, 5, 6], [3]):  # level by level, as feed runs them
        idx = torch.tensor(new)
        outs.append(head.forward_tree(torch.randint(0, 64, (idx.numel(),), generator=g),
                                      torch.randn(idx.numel(), hidden, generator=g),
                                      t_pos[idx], cache, prefix, ptr, t_bits, idx))
    return outs + [cache.buf]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_same_bits_as_the_op_by_op_path(monkeypatch, dtype, qkv_bias):
    head = random_head(target64(dtype), seed=2)
    if qkv_bias:  # the shipped head has none, but the op takes one
        g = torch.Generator().manual_seed(9)
        for proj in (head.self_attn.q_proj, head.self_attn.k_proj, head.self_attn.v_proj):
            proj.bias = torch.nn.Parameter(
                (0.3 * torch.randn(proj.out_features, generator=g)).to(dtype),
                requires_grad=False)
    assert head.dtype == dtype
    assert (head.packed_layers().qkv_bias is not None) == qkv_bias
    calls = []
    real = ops.eagle_head_layer
    monkeypatch.setattr(ops, "eagle_head_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = refresh_then_feed(head)
    assert len(calls) == 4
    monkeypatch.setattr(eagle_head, "_FUSED_HEAD", False)
    op_by_op = refresh_then_feed(head)
    assert len(calls) == 4
    for a, b in zip(fused, op_by_op, strict=True):
        assert a.dtype == dtype
        assert torch.equal(a, b)


def random_op_args(dtype, device, seed, act_quant=0, bias=False, subset=False):
    """Random inputs over a batch of two trees (5 and 3 nodes) after prefixes 7 and 2, random
    cache contents; with ``subset``, only nodes 1, 3 and 6 are new."""
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads, d, hidden, inter = 2, 1, 64, 128, 96
    qkv_rows = (heads + 2 * kv_heads) * d
    types = [ops.GGML_BF16, ops.GGML_Q4_1, ops.GGML_Q8_0, ops.GGML_BF16, ops.GGML_Q4_1]
    shapes = [(hidden, 2 * hidden), (qkv_rows, hidden), (hidden, heads * d), (2 * inter, hidden),
              (hidden, inter)]
    weights = [packed(torch.randn(n, k, generator=g) * k ** -0.5, t).to(device)
               for (n, k), t in zip(shapes, types, strict=True)]
    parents = torch.tensor([-1, 0, 0, 1, 3, -1, 0, 0], dtype=torch.int32)
    indptr = torch.tensor([0, 5, 8], dtype=torch.int32)
    prefix = torch.tensor([7, 2], dtype=torch.int32)
    positions, bits = tree_inputs(parents, indptr, prefix)
    req = torch.tensor([0] * 5 + [1] * 3)
    rows = prefix.long()[req] + torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    new = torch.tensor([1, 3, 6]) if subset else torch.arange(8)
    cos, sin = rope_cos_sin(positions[new], 10000.0 ** (-torch.arange(0, d, 2) / d), dtype)
    m = new.numel()
    return dict(
        tokens=torch.randint(0, 40, (m,), generator=g).to(device),
        features=torch.randn(m, hidden, generator=g).to(dtype).to(device),
        embed=torch.randn(40, hidden, generator=g).to(dtype).to(device),
        weights=weights, ggml_types=types, act_quants=[act_quant] * 5,
        biases=[(0.2 * torch.randn(r, generator=g)).to(device) if bias else None
                for r in (hidden, qkv_rows, hidden)],
        norm=(1 + 0.2 * torch.randn(hidden, generator=g)).to(dtype).to(device),
        cos=cos.view(m, d).to(device), sin=sin.view(m, d).to(device),
        kv_cache=torch.randn(1, 2, 3, 16, kv_heads, d, generator=g).to(dtype).to(device),
        req=req[new].to(device), rows=rows[new].to(device), prefix_lens=prefix.to(device),
        tree_indptr=indptr.to(device), mask_bits=bits.to(device),
        new_index=new.to(device) if subset else None, num_heads=heads, num_kv_heads=kv_heads,
        eps=1e-5, scale=d ** -0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act_quant,bias,subset", [
    (0, False, False), (0, True, False), (8, False, False), (0, False, True), (0, True, True)])
def test_matches_reference_and_leaves_other_rows(device, dtype, act_quant, bias, subset):
    args = random_op_args(dtype, device, seed=act_quant + 2 * bias + 4 * subset,
                          act_quant=act_quant, bias=bias, subset=subset)
    before = args["kv_cache"].clone()
    ref_args = {k: cpu_copy(v) for k, v in args.items()}
    if act_quant and device == "cuda":
        ref_args["act_quants"] = [0] * 5  # CUDA runs float activations
    want = ref.eagle_head_layer(**ref_args)
    got = ops.eagle_head_layer(**args)
    assert got.shape == want.shape == (args["tokens"].numel(), 128)
    check_against_reference(got, want, args, ref_args, before, dtype)


def test_a_row_alone_equals_the_row_in_a_batch():
    """New node 6 (request 1, child of its root) computed with nodes 1 and 3 of request 0 and
    alone in a one-request call over the same cache rows."""
    args = random_op_args(torch.float32, "cpu", seed=3, subset=True)
    base = {k: cpu_copy(v) for k, v in args.items()}
    together = ops.eagle_head_layer(**args)
    alone = dict(base, tokens=base["tokens"][2:], features=base["features"][2:],
                 cos=base["cos"][2:], sin=base["sin"][2:], req=torch.zeros(1, dtype=torch.int64),
                 rows=base["rows"][2:], prefix_lens=base["prefix_lens"][1:],
                 tree_indptr=torch.tensor([0, 3], dtype=torch.int32),
                 mask_bits=base["mask_bits"][5:], new_index=torch.tensor([1]),
                 kv_cache=base["kv_cache"][:, :, 1:].clone())
    assert torch.equal(ops.eagle_head_layer(**alone)[0], together[2])


def test_opcheck():
    for dtype, subset in ((torch.float32, False), (torch.bfloat16, True)):
        args = random_op_args(dtype, "cpu", seed=7, subset=subset)
        out = torch.empty(args["tokens"].numel(), 128, dtype=dtype)
        torch.library.opcheck(torch.ops.adaeagle.eagle_head_layer,
                              (*args.values(), out))


@pytest.mark.parametrize("change,message", [
    (dict(weights="drop"), "weights \\(fc, q/k/v, o, gate/up, down\\) must hold 5 entries"),
    (dict(ggml_types="drop"), "ggml_types must hold 5 entries"),
    (dict(act_quants="drop"), "act_quants must hold 5 entries"),
    (dict(biases="drop"), "biases \\(fc, q/k/v, o; each a tensor or None\\) must hold 3"),
    (dict(embed="int"), "embed must be float32 or bfloat16"),
    (dict(features="bf16"), "features \\(embed's dtype\\) must be"),
    (dict(tokens="int32"), "tokens must be Long"),
    (dict(norm="short"), "norm.size\\(0\\) must be 128"),
    (dict(weights="rows"), "weights\\[2\\] \\(o\\).size\\(0\\) must be 128"),
    (dict(weights="width"), "weights\\[4\\] \\(down\\).size\\(1\\) must be"),
    (dict(kv_cache="two_layers"), "kv_cache \\(the head's one layer\\).size\\(0\\) must be 1"),
    (dict(num_kv_heads=2), "kv_cache.size\\(4\\) must be 2"),
    (dict(num_heads=0), "num_heads and num_kv_heads must be >= 1"),
    (dict(new_index="short"), "new_index.size\\(0\\) must be 3"),
    (dict(new_index=None), "without new_index every node is new"),
    (dict(prefix_lens="short"), "prefix_lens \\(one per request of tree_indptr\\).size\\(0\\) "
                                "must be 2"),
    (dict(tree_indptr="int64"), "tree_indptr must be Int"),
])
def test_bad_arguments_raise(change, message):
    args = random_op_args(torch.float32, "cpu", seed=1, subset=True)
    (key, how), = change.items()
    if how == "drop":
        args[key] = args[key][:-1]
    elif how == "int":
        args[key] = args[key].long()
    elif how == "int32":
        args[key] = args[key].int()
    elif how == "int64":
        args[key] = args[key].long()
    elif how == "bf16":
        args[key] = args[key].bfloat16()
    elif how == "short":
        args[key] = args[key][:-1]
    elif how == "rows":
        args[key] = [w[:-1] if i == 2 else w for i, w in enumerate(args[key])]
    elif how == "width":
        args[key] = [w[:, :-2].contiguous() if i == 4 else w for i, w in enumerate(args[key])]
    elif how == "two_layers":
        args[key] = torch.cat([args[key], args[key]])
    else:
        args[key] = how
    before = args["kv_cache"].clone()
    with pytest.raises(RuntimeError, match=message):
        ops.eagle_head_layer(**args)
    assert torch.equal(args["kv_cache"], before)  # nothing written on failure
