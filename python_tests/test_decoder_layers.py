"""decoder_layers: a hand-built golden, bitwise equality with the model's per-layer modules over
weight types, dtypes, act_quant and batches of trees, agreement with ref.py, untouched cache rows,
opcheck and bad input."""

from __future__ import annotations

import pytest
import torch
from composed_op_fixtures import check_against_reference, cpu_copy
from model_fixtures import chain_then_tree, random_weights, tiny_config

from adaeagle_ext import ops, ref
from adaeagle_ext.models import llama
from adaeagle_ext.models.packed_layers import set_act_quant
from adaeagle_ext.models.tree_inputs import tree_inputs
from adaeagle_ext.packed import PackedWeight


def packed(w: torch.Tensor, ggml_type: int = ops.GGML_F32) -> torch.Tensor:
    return PackedWeight.from_float(w, ggml_type).data


def golden_args(dtype, device):
    """One layer, hidden 64 = one head of 64 (one KV head), intermediate 32, F32 weights, one
    token at position 0 (cos 1, sin 0) with x = +-1 (rms 1, eps 0: the norms change nothing).
    q/k/v = x; attention over itself alone = v = x; o = identity: x -> 2x (rms 2, normed x
    again); gate = 20 * x[0] = 20 (silu(20) = 20 in fp32 and bf16), up = x[:32]; down = 0.25 on
    the first 32 outputs: + 5 x[:32]. So x ends as 7 x on dims 0-31 and 2 x on dims 32-63."""
    eye = torch.eye(64)
    gate = torch.zeros(32, 64)
    gate[:, 0] = 20.0
    down = torch.zeros(64, 32)
    down[:32] = 0.25 * torch.eye(32)
    weights = [packed(torch.cat([eye, eye, eye])), packed(eye),
               packed(torch.cat([gate, eye[:32]])), packed(down)]
    signs = [1.0] + [(-1.0) ** (j // 3) for j in range(1, 64)]
    x = torch.tensor([signs], dtype=dtype, device=device)
    norms = [torch.ones(64, dtype=dtype, device=device)] * 2
    cache = torch.zeros(1, 2, 1, 4, 1, 64, dtype=dtype, device=device)
    i32 = dict(dtype=torch.int32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return dict(
        x=x, norms=norms, weights=[w.to(device) for w in weights], ggml_types=[0] * 4,
        act_quants=[0] * 4, qkv_biases=[None],
        cos=torch.ones(1, 64, dtype=dtype, device=device),
        sin=torch.zeros(1, 64, dtype=dtype, device=device), kv_cache=cache,
        req=torch.zeros(1, **i64), rows=torch.zeros(1, **i64),
        prefix_lens=torch.zeros(1, **i32), tree_indptr=torch.tensor([0, 1], **i32),
        mask_bits=torch.ones(1, **i64), num_heads=1, num_kv_heads=1, eps=0.0, scale=0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_golden_one_layer(device, dtype):
    args = golden_args(dtype, device)
    x_in = args["x"].clone()
    out = ops.decoder_layers(**args)
    assert out is args["x"]
    signs = x_in[0].float().cpu()
    assert out[0].float().cpu().tolist() == (signs * torch.tensor([7.0] * 32 + [2.0] * 32)).tolist()
    cache = args["kv_cache"].float().cpu()
    assert cache[0, 0, 0, 0, 0].tolist() == signs.tolist()  # k = x (cos 1, sin 0)
    assert cache[0, 1, 0, 0, 0].tolist() == signs.tolist()  # v = x
    assert int((cache[0, :, 0, 1:] != 0).sum()) == 0  # rows 1-3 untouched


def head64_model(dtype, ggml_types, seed=0, num_layers=2, bias=False):
    """A tiny model with head dim 64 (the op's attention takes 64 and 128) on packed weights."""
    config = tiny_config(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=96,
                         num_layers=num_layers, attention_bias=bias)
    weights = random_weights(config, seed)
    if bias:
        g = torch.Generator().manual_seed(seed + 1)
        for name in list(weights):
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                bias_name = name.replace("weight", "bias")
                weights[bias_name] = 0.3 * torch.randn(weights[name].shape[0], generator=g)
    def type_of(name):  # q/k/v share a type, and gate/up, so that they fuse
        role = (1 if "o_proj" in name else 2 if "gate_proj" in name or "up_proj" in name
                else 3 if "down_proj" in name else 0)
        return ggml_types[role % len(ggml_types)]

    packs = {k: PackedWeight.from_float(v, type_of(k)) for k, v in weights.items()
             if v.dim() == 2 and "embed" not in k}
    return llama.build_model(config, weights, dtype, packs)


def forward_both_ways(model, monkeypatch):
    monkeypatch.setattr(llama, "_FUSED_LAYERS", True)
    assert model._decoder_layers_args(torch.empty(1, 128, dtype=model.dtype),
                                      model.new_cache(1, 1).buf) is not None
    fused = chain_then_tree(model)
    monkeypatch.setattr(llama, "_FUSED_LAYERS", False)
    return fused, chain_then_tree(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ggml_types", [
    (ops.GGML_Q4_1,), (ops.GGML_Q8_0,), (ops.GGML_BF16, ops.GGML_F32),
    (ops.GGML_Q4_0, ops.GGML_Q8_0, ops.GGML_F16)])
def test_same_bits_as_the_modules(monkeypatch, dtype, ggml_types):
    model = head64_model(dtype, ggml_types, seed=len(ggml_types))
    fused, modules = forward_both_ways(model, monkeypatch)
    for a, b in zip(fused, modules, strict=True):  # logits, hidden (two calls) and the cache
        assert torch.equal(a, b)


def test_same_bits_with_qkv_bias_and_act_quant(monkeypatch):
    model = head64_model(torch.float32, (ops.GGML_Q4_1, ops.GGML_Q8_0), seed=5, bias=True)
    assert model.model.layers[0].self_attn.qkv_bias is not None
    set_act_quant(model, 8)
    fused, modules = forward_both_ways(model, monkeypatch)
    for a, b in zip(fused, modules, strict=True):
        assert torch.equal(a, b)


def test_modules_run_where_the_op_does_not_apply():
    model = head64_model(torch.float32, (ops.GGML_Q8_0,))
    buf = model.new_cache(1, 1).buf
    x = torch.empty(1, 128)
    assert model._decoder_layers_args(x, buf) is not None
    assert model._decoder_layers_args(x.bfloat16(), buf) is None  # dtypes differ
    model.model.layers[1].mlp.gate_up_packed = None  # one layer not fused
    assert model._decoder_layers_args(x, buf) is None
    small = tiny_config()  # head dim 8: the attention kernel takes 64 and 128
    dense = llama.build_model(small, random_weights(small))
    assert dense._decoder_layers_args(torch.empty(1, 48), dense.new_cache(1, 1).buf) is None


def test_kept_arguments_follow_changes_to_the_layers():
    model = head64_model(torch.float32, (ops.GGML_Q8_0,))
    buf = model.new_cache(1, 1).buf
    x = torch.empty(1, 128)
    first = model._decoder_layers_args(x, buf)
    assert model._decoder_layers_args(x, buf) is first  # kept while nothing changed
    assert set(first[3]) == {0}
    set_act_quant(model, 8)
    assert set(model._decoder_layers_args(x, buf)[3]) == {8}
    norm = model.model.layers[0].input_layernorm
    norm.weight = torch.nn.Parameter(norm.weight.detach().clone())
    assert model._decoder_layers_args(x, buf)[0][0] is norm.weight
    model.model.layers.append(model.model.layers[0])  # layer count changed
    assert len(model._decoder_layers_args(x, buf)[0]) == 2 * len(model.model.layers)


def random_op_args(dtype, device, seed, act_quant=0, bias=False):
    """Random inputs for 2 layers over a batch of two trees (5 and 3 nodes) after prefixes 7
    and 2, with random cache contents."""
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads, d, hidden, inter, layers = 2, 1, 64, 128, 96, 2
    types = [ops.GGML_Q4_1, ops.GGML_Q8_0, ops.GGML_BF16, ops.GGML_Q4_1]
    shapes = [((heads + 2 * kv_heads) * d, hidden), (hidden, heads * d), (2 * inter, hidden),
              (hidden, inter)]
    weights, ggml_types = [], []
    for _ in range(layers):
        for (n, k), t in zip(shapes, types, strict=True):
            weights.append(packed(torch.randn(n, k, generator=g) * k ** -0.5, t).to(device))
            ggml_types.append(t)
    parents = torch.tensor([-1, 0, 0, 1, 3, -1, 0, 0], dtype=torch.int32)
    indptr = torch.tensor([0, 5, 8], dtype=torch.int32)
    prefix = torch.tensor([7, 2], dtype=torch.int32)
    positions, bits = tree_inputs(parents, indptr, prefix)
    req = torch.tensor([0] * 5 + [1] * 3)
    rows = prefix.long()[req] + torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    cos, sin = llama.rope_cos_sin(positions, 10000.0 ** (-torch.arange(0, d, 2) / d), dtype)
    n = positions.numel()
    qkv_rows = shapes[0][0]
    return dict(
        x=torch.randn(n, hidden, generator=g).to(dtype).to(device),
        norms=[(1 + 0.2 * torch.randn(hidden, generator=g)).to(dtype).to(device)
               for _ in range(2 * layers)],
        weights=weights, ggml_types=ggml_types, act_quants=[act_quant] * (4 * layers),
        qkv_biases=[(0.2 * torch.randn(qkv_rows, generator=g)).to(device) if bias else None
                    for _ in range(layers)],
        cos=cos.view(n, d).to(device), sin=sin.view(n, d).to(device),
        kv_cache=torch.randn(layers, 2, 3, 16, kv_heads, d, generator=g).to(dtype).to(device),
        req=req.to(device), rows=rows.to(device), prefix_lens=prefix.to(device),
        tree_indptr=indptr.to(device), mask_bits=bits.to(device), num_heads=heads,
        num_kv_heads=kv_heads, eps=1e-5, scale=d ** -0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act_quant,bias", [(0, False), (0, True), (8, False)])
def test_matches_reference_and_leaves_other_rows(device, dtype, act_quant, bias):
    args = random_op_args(dtype, device, seed=act_quant + bias, act_quant=act_quant, bias=bias)
    before = args["kv_cache"].clone()
    ref_args = {k: cpu_copy(v) for k, v in args.items()}
    if act_quant and device == "cuda":
        ref_args["act_quants"] = [0] * len(args["act_quants"])  # CUDA runs float activations
    want = ref.decoder_layers(**ref_args)
    got = ops.decoder_layers(**args)
    check_against_reference(got, want, args, ref_args, before, dtype)


def test_a_row_alone_equals_the_row_in_a_batch():
    args = random_op_args(torch.float32, "cpu", seed=3)
    base = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    together = ops.decoder_layers(**args)
    # Node 0 of request 1 (row 5) alone: its tree is just itself, over the same prefix.
    alone = dict(base, x=base["x"][5:6].clone(), cos=base["cos"][5:6], sin=base["sin"][5:6],
                 req=base["req"][5:6], rows=base["rows"][5:6],
                 prefix_lens=base["prefix_lens"][1:], tree_indptr=torch.tensor(
                     [0, 1], dtype=torch.int32), mask_bits=torch.ones(1, dtype=torch.int64),
                 kv_cache=base["kv_cache"][:, :, 1:].clone())
    alone["req"] = torch.zeros(1, dtype=torch.int64)
    assert torch.equal(ops.decoder_layers(**alone)[0], together[5])


def test_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        args = random_op_args(dtype, "cpu", seed=7)
        torch.library.opcheck(torch.ops.adaeagle.decoder_layers, tuple(args.values()))


@pytest.mark.parametrize("change,message", [
    (dict(norms="drop"), "norms must hold 2 tensors per layer"),
    (dict(weights="drop"), "weights must hold 4 entries per layer"),
    (dict(ggml_types="drop"), "ggml_types must hold 4 entries per layer"),
    (dict(act_quants="drop"), "act_quants must hold 4 entries per layer"),
    (dict(qkv_biases="drop"), "qkv_biases must hold one entry"),
    (dict(x="int"), "x must be float32 or bfloat16"),
    (dict(norms="bf16"), "norms\\[i\\] \\(same dtype as x\\) must be"),
    (dict(weights="short"), "weights\\[4 \\* layer \\+ 1\\] \\(o\\).size\\(0\\) must be 128"),
    (dict(num_kv_heads=2), "kv_cache.size\\(4\\) must be 2"),
    (dict(num_heads=0), "num_heads and num_kv_heads must be >= 1"),
    (dict(kv_cache="bf16"), "kv_cache \\(same dtype as x\\) must be"),
])
def test_bad_arguments_raise(change, message):
    args = random_op_args(torch.float32, "cpu", seed=1)
    (key, how), = change.items()
    if how == "drop":
        args[key] = args[key][:-1]
    elif how == "int":
        args[key] = args[key].long()
    elif how == "bf16" and key == "norms":
        args[key] = [w.bfloat16() for w in args[key]]
    elif how == "bf16":
        args[key] = args[key].bfloat16()
    elif how == "short":
        args[key] = [w[:-1] if i == 1 else w for i, w in enumerate(args[key])]
    else:
        args[key] = how
    before = args["x"].clone()
    with pytest.raises(RuntimeError, match=message):
        ops.decoder_layers(**args)
    assert torch.equal(args["x"], before)  # nothing written on failure
