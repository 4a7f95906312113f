"""Configuration of a Llama-family decoder (Llama, SmolLM, Qwen2-style q/k/v biases)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "dynamic")


@dataclass
class LlamaConfig:
    """Shapes and constants of a Llama-family decoder.

    ``attention_bias`` adds biases to q/k/v (Qwen2 style); ``attention_out_bias`` to o_proj
    (HF Llama's ``attention_bias=True`` sets both). ``rope_scaling`` follows the HF dict
    (``{"rope_type": "linear" | "llama3" | "dynamic", "factor": ..., ...}``).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_out_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        rope_type = self.rope_type
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type {rope_type!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)})"
            )

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies, float32 [head_dim // 2] on the CPU (also inside a
        ``torch.device`` context), with the configured scaling."""
        dim = self.head_dim
        steps = torch.arange(0, dim, 2, dtype=torch.float32, device="cpu")
        inv = 1.0 / (self.rope_theta ** (steps / dim))
        kind = self.rope_type
        if kind == "linear":
            inv = inv / float(self.rope_scaling["factor"])
        elif kind == "llama3":
            inv = _llama3_scaled(inv, self.rope_scaling)
        # "dynamic" NTK only changes frequencies past the original context; the positions this
        # runtime serves stay inside it, where it equals "default".
        return inv

    @classmethod
    def from_hf_dict(cls, d: dict) -> LlamaConfig:
        """Build from a HF ``config.json`` dict (model_type llama, mistral or qwen2)."""
        model_type = d.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"config.json model_type {model_type!r} is not a supported decoder")
        if d.get("mlp_bias"):
            raise ValueError("config.json mlp_bias=True is not supported")
        eos = d.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        qwen = model_type == "qwen2"
        bias = bool(d.get("attention_bias", False))
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6 if qwen else 1e-5),
            rope_theta=d.get("rope_theta", (d.get("rope_parameters") or {}).get("rope_theta", 1e4)),
            rope_scaling=_hf_rope_scaling(d),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            attention_bias=qwen or bias,
            attention_out_bias=(not qwen) and bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    def to_hf_dict(self) -> dict:
        """A HF ``LlamaConfig`` dict of the same model (the q/k/v/o biases must agree)."""
        if self.attention_bias != self.attention_out_bias:
            raise ValueError("HF LlamaConfig cannot express q/k/v biases without an o_proj bias")
        d = dict(
            model_type="llama",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=self.attention_bias,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else
            (self.eos_token_ids or None),
        )
        return d

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)


def _hf_rope_scaling(d: dict) -> dict | None:
    scaling = d.get("rope_scaling") or d.get("rope_parameters")
    if not scaling:
        return None
    scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return None if kind == "default" else scaling


def _llama3_scaled(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor = float(s["factor"])
    low = float(s.get("low_freq_factor", 1.0))
    high = float(s.get("high_freq_factor", 4.0))
    old_len = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen = old_len / low
    high_wavelen = old_len / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)
