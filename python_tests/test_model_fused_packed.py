"""Packed q/k/v and gate/up run as one stacked ``ops.linear`` each: the same bits as apart."""

import torch
from model_fixtures import chain_then_tree, random_weights, tiny_config

from adaeagle_ext import ops
from adaeagle_ext.models.llama import build_model
from adaeagle_ext.packed import PackedWeight


def packed_target(ggml_type: int):
    config = tiny_config(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=96)
    weights = random_weights(config, seed=11)
    packed = {k: PackedWeight.from_float(v, ggml_type) for k, v in weights.items()
              if v.dim() == 2 and "embed" not in k}
    return build_model(config, weights, packed=packed)


def test_fused_layers_give_the_same_bits():
    for ggml_type in (ops.GGML_Q8_0, ops.GGML_Q4_1, ops.GGML_BF16):
        model = packed_target(ggml_type)
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        assert attn.qkv_packed is not None and mlp.gate_up_packed is not None
        fused = chain_then_tree(model)
        for layer in model.model.layers:
            layer.self_attn.qkv_packed = None
            layer.mlp.gate_up_packed = None
        apart = chain_then_tree(model)
        for a, b in zip(fused, apart, strict=True):
            assert torch.equal(a, b)
