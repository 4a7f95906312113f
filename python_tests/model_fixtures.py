"""Tiny random Llama models shared by the model / generation tests."""

from __future__ import annotations

import torch
import transformers

from adaeagle_ext.models.config import LlamaConfig
from adaeagle_ext.models.llama import build_model
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs


def tiny_config(**changes) -> LlamaConfig:
    base = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_layers=2,
                num_heads=6, num_kv_heads=2, rope_theta=1000.0, max_position_embeddings=512,
                rms_norm_eps=1e-5)
    base.update(changes)
    return LlamaConfig(**base)


def random_weights(config: LlamaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named fp32 weights, scaled so logits are O(1) and differences are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model_shapes(config).items()}
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 8
            out[name] = torch.randn(shape, generator=g) * (1.5 / fan_in ** 0.5)
    return out


def build_model_shapes(config: LlamaConfig):
    from adaeagle_ext.models.llama import LlamaForCausalLM

    return LlamaForCausalLM(config).state_dict()


def ours(config: LlamaConfig, weights, dtype=torch.float32):
    return build_model(config, weights, dtype)


def hf_model(config: LlamaConfig, weights, dtype=torch.float32):
    """transformers' LlamaForCausalLM holding the same weights."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf_dict()))
    sd = dict(weights)
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return hf.to(dtype).eval()


def chain_then_tree(model) -> list[torch.Tensor]:
    """Two forwards of a 2-request batch into a fresh cache: chains of 9 and 4 prompt tokens,
    then trees of 6 and 3 nodes. Returns both calls' (logits, hidden) and the cache buffer."""
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache(2, 64)
    zero = torch.zeros(2, dtype=torch.int32)
    pos, ptr, bits = chain_inputs(torch.tensor([9, 4]), zero)
    first = model(torch.randint(0, 101, (13,), generator=g), pos, ptr, bits, zero, cache)
    parents = torch.tensor([-1, 0, 0, 1, 2, 2, -1, 0, 1], dtype=torch.int32)
    ptr = torch.tensor([0, 6, 9], dtype=torch.int32)
    prefix = torch.tensor([9, 4], dtype=torch.int32)
    t_pos, t_bits = tree_inputs(parents, ptr, prefix)
    second = model(torch.randint(0, 101, (9,), generator=g), t_pos, ptr, t_bits, prefix, cache)
    return [*first, *second, cache.buf]
