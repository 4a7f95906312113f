"""LDLP: AdaEAGLE's lightweight draft-length predictor as a trainable ``torch.nn.Module``.

The architecture is fixed (design.md, "Drafters"): RMS-normalise the embedding of the last
accepted token and the target's final-normed hidden state there (no weights), concatenate
them (2H), project to width W, apply three residual blocks ``x + silu(Linear(W, W)(x))`` and
map to one scalar. The parameter names map 1:1 onto ``ops.LdlpWeights``: ``proj`` is
(w_in, b_in), ``blocks.i`` is (w_blocks[i], b_blocks[i]) and ``head`` is (w_out, b_out).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from adaeagle_ext import ops
from adaeagle_ext.drafters.weights_file import read_weights_file

FORMAT = "adaeagle-ldlp-v1"


def rms_normalise(v: torch.Tensor, eps: float) -> torch.Tensor:
    """``v / sqrt(mean(v^2, -1) + eps)`` in float32, without weights."""
    v = v.float()
    return v * torch.rsqrt(v.pow(2).mean(dim=-1, keepdim=True) + eps)


class LDLP(nn.Module):
    """Regresses the next draft length from (emb, hidden) of the last accepted token."""

    def __init__(self, hidden_size: int, width: int = 256, eps: float = 1e-6) -> None:
        super().__init__()
        if not 1 <= width <= ops.LDLP_MAX_WIDTH:
            raise ValueError(f"width must be in [1, {ops.LDLP_MAX_WIDTH}], got {width}")
        self.hidden_size = hidden_size
        self.width = width
        self.eps = eps
        self.proj = nn.Linear(2 * hidden_size, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(ops.LDLP_BLOCKS))
        self.head = nn.Linear(width, 1)
        self._packed: ops.LdlpWeights | None = None
        self._packed_key: tuple | None = None

    def forward(self, emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """emb, hidden [..., H] -> raw length y [...] in the parameters' dtype (differentiable)."""
        x = torch.cat([rms_normalise(emb, self.eps), rms_normalise(hidden, self.eps)], dim=-1)
        x = self.proj(x.to(self.proj.weight.dtype))
        for block in self.blocks:
            x = x + nn.functional.silu(block(x))
        return self.head(x).squeeze(-1)

    def weights(self) -> ops.LdlpWeights:
        """The parameters in the fused op's layout (detached; the blocks stacked). Cached until a
        parameter changes (in-place update, ``.to()``, ``load_state_dict``)."""
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        if self._packed is None or key != self._packed_key:
            self._packed = ops.LdlpWeights.from_module(self)
            self._packed_key = key
        return self._packed

    @torch.no_grad()
    def predict(self, emb: torch.Tensor, hidden: torch.Tensor, k_max: int) -> torch.Tensor:
        """Draft lengths int32 [B] = clamp(round(forward(emb, hidden)), 0, k_max) by the fused
        ``ldlp_mlp`` op. emb, hidden: contiguous [B, H], float32 or bfloat16."""
        return ops.ldlp_mlp(emb, hidden, self.weights(), k_max, self.eps).lengths

    def save(self, path: str | Path, *, k_max: int, target_fingerprint: float | None = None,
             extra: dict | None = None, dtype: torch.dtype | None = None) -> None:
        """Weights (optionally cast) + JSON metadata: hidden_size, width, eps, ``k_max`` (the
        cap it was trained with), the target's embedding fingerprint, and ``extra`` (training
        record). Safetensors only, never pickle."""
        tensors = {k: (v.to(dtype) if dtype is not None else v).detach().contiguous()
                   for k, v in self.state_dict().items()}
        config = dict(hidden_size=self.hidden_size, width=self.width, eps=self.eps,
                      k_max=int(k_max), target_fingerprint=target_fingerprint)
        meta = {"format": FORMAT, "config": json.dumps(config)}
        if extra:
            meta["extra"] = json.dumps(extra)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, hidden_size: int | None = None) -> tuple[LDLP, dict]:
        """An LDLP saved by ``save`` and its config dict (``k_max``, ``target_fingerprint``,
        ...; ``extra`` parsed when present). Weights keep their stored dtype.

        Raises:
            FileNotFoundError / ValueError naming the file: missing, not an LDLP file, weights
            that disagree with the config, or a hidden size other than ``hidden_size``.
        """
        path, tensors, meta = read_weights_file(path, "LDLP", FORMAT)
        try:
            config = json.loads(meta["config"])
            module = cls(config["hidden_size"], config["width"], config["eps"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: missing or unusable LDLP config ({e!r})") from None
        if hidden_size is not None and config["hidden_size"] != hidden_size:
            raise ValueError(f"{path}: LDLP was trained for hidden size "
                             f"{config['hidden_size']}, the target has {hidden_size}")
        dtypes = {t.dtype for t in tensors.values()}
        try:
            module.load_state_dict(tensors)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match its config: {e}") from None
        if len(dtypes) == 1:
            module.to(dtypes.pop())
        if "extra" in meta:
            config["extra"] = json.loads(meta["extra"])
        return module.requires_grad_(False).eval(), config
