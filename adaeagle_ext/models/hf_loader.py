"""HF-format checkpoints: a directory with ``config.json`` and ``*.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from adaeagle_ext.models.config import LlamaConfig


def read_hf_dir(path: str | Path, progress: bool = False
                ) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Config and float weights (HF names, stored dtype) of a safetensors checkpoint directory.

    Raises FileNotFoundError / ValueError naming the missing or bad file.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a HF checkpoint directory)")
    try:
        config = LlamaConfig.from_hf_dict(json.loads(cfg_file.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{cfg_file}: not a usable model config ({e!r})") from e
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ValueError(f"{path}: only pickle checkpoints (*.bin/*.pt) found; "
                             "convert them to safetensors (pickle is never loaded)")
        raise FileNotFoundError(f"{path}: no *.safetensors files")
    weights: dict[str, torch.Tensor] = {}
    for f in tqdm(files, desc="reading safetensors", unit="file", disable=not progress):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    weights[name] = st.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from e
    return config, weights
