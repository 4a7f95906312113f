"""Tokenizer and chat template through ``transformers`` (from a HF dir or GGUF metadata)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

Message = dict  # {"role": "user" | "system" | "assistant", "content": str}


class Tokenizer:
    """Thin wrapper: ``encode`` (raw text or chat messages), ``decode``, ``eos_ids``."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load from a directory holding HF tokenizer files."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))

    @classmethod
    def from_gguf(cls, path: str | Path, cache_dir: str | Path | None = None) -> Tokenizer:
        """Build from a GGUF file's metadata; the converted tokenizer is cached in
        ``cache_dir`` (default: ``<gguf>.tokenizer/`` next to it, when writable)."""
        from transformers import AutoTokenizer

        path = Path(path)
        cache = Path(cache_dir) if cache_dir else path.with_name(path.name + ".tokenizer")
        if (cache / "tokenizer_config.json").is_file():
            return cls.from_dir(cache)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                            local_files_only=True)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        try:
            tok.save_pretrained(str(tmp))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only location just means converting again next time
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(tok)

    @property
    def eos_ids(self) -> list[int]:
        ids = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        return sorted(ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, prompt: str | Sequence[Message], chat: bool | None = None) -> list[int]:
        """Token ids of a raw prompt (``str``) or of chat messages (rendered with the chat
        template plus the assistant prefix). ``chat=True`` wraps a ``str`` as one user turn."""
        if isinstance(prompt, str) and not chat:
            return list(self.hf(prompt, add_special_tokens=True)["input_ids"])
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; pass a raw prompt string")
        out = self.hf.apply_chat_template(list(messages), add_generation_prompt=True,
                                          tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)
