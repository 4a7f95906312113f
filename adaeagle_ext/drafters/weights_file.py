"""Reading the drafters' safetensors files (weights + JSON metadata), with errors that name
the file. Never pickle."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def read_weights_file(path: str | Path, kind: str,
                      fmt: str) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """(path, tensors, metadata) of a file written with ``metadata["format"] == fmt``.

    Raises:
        FileNotFoundError: no such file. ValueError: not readable as safetensors, or another
        format (the message names the file and ``kind``, e.g. "EAGLE head").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {str(path)!r}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not an {kind} file (format {meta.get('format')!r})")
    return path, tensors, meta
