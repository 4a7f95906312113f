"""Tiny random Llama models shared by the model / generation tests."""

from __future__ import annotations

import torch
import transformers

from adaeagle_ext.models.config import LlamaConfig
from adaeagle_ext.models.llama import build_model


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
