"""Reference decoders measured in the same run: what a user would pick instead.

- ``hf``: transformers ``generate`` (greedy at temperature 0), on a transformers
  ``LlamaForCausalLM`` holding the runtime's own (dequantised) weights in the runtime's dtype.
- ``hf-pld`` (``hf-pld:N``): the same with prompt lookup decoding (``prompt_lookup_num_tokens``
  = N, default 10, matching n-grams of up to 3 tokens, as Spec-Bench's PLD).
- ``llama_cpp``: llama.cpp (``llama_cpp`` package, only when importable) on the original GGUF
  with its own quantised weights: a different numeric format, so a reference row only.

Every peer has ``run(prompt_ids, max_new_tokens, eos_ids, temperature, seed) -> TurnResult``.
tau is derived from the number of forward calls (the prefill's is not a decoding step).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from adaeagle_ext.bench.metrics import TurnResult
from adaeagle_ext.models.llama import LlamaForCausalLM

PEERS = ("hf", "hf-pld", "llama_cpp")
PLD_TOKENS = 10
PLD_NGRAM = 3


def available_peers() -> list[str]:
    """The peers this environment can run."""
    out = ["hf", "hf-pld"]
    if importlib.util.find_spec("llama_cpp") is not None:
        out.append("llama_cpp")
    return out


def is_peer(method: str) -> bool:
    return method.partition(":")[0] in PEERS


def hf_from_runtime(model: LlamaForCausalLM):
    """A transformers LlamaForCausalLM holding ``model``'s weights, in ``model``'s dtype."""
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf_dict()))
    state = {k: v for k, v in dense_state_dict(model).items()
             if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise ValueError(f"weights do not map onto transformers' Llama: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    if model.config.tie_word_embeddings:
        hf.tie_weights()
    return hf.to(model.dtype).eval()


def dense_state_dict(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """``model``'s HF-named weights with packed (native GGUF) layers dequantised (float32)."""
    from adaeagle_ext.models.packed_layers import PackedEmbedding, PackedLinear

    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, (PackedLinear, PackedEmbedding)):
            state[f"{name}.weight"] = module.dense_weight()
            if isinstance(module, PackedLinear) and module.bias is not None:
                state[f"{name}.bias"] = module.bias
    return state


def _cut_at_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    eos = set(eos_ids)
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


class HFPeer:
    """transformers ``generate``; ``pld_tokens`` > 0 turns on prompt lookup decoding."""

    def __init__(self, model: LlamaForCausalLM, pld_tokens: int = 0, hf_model=None):
        self.hf = hf_model if hf_model is not None else hf_from_runtime(model)
        self.pld_tokens = pld_tokens
        self.forwards = 0
        self.hf.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.forwards += 1

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: Sequence[int],
            temperature: float = 0.0, seed: int = 0) -> TurnResult:
        ids = torch.tensor([prompt_ids], dtype=torch.int64)
        kw = dict(max_new_tokens=max_new_tokens, attention_mask=torch.ones_like(ids),
                  eos_token_id=list(eos_ids) or None,
                  pad_token_id=(list(eos_ids) or [0])[0])
        if temperature > 0:
            torch.manual_seed(seed)
            kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if self.pld_tokens:
            kw.update(prompt_lookup_num_tokens=self.pld_tokens, max_matching_ngram_size=PLD_NGRAM)
        self.forwards = 0
        t0 = time.perf_counter()
        out = self.hf.generate(ids, **kw)
        wall = time.perf_counter() - t0
        raw = out[0, len(prompt_ids):].tolist()
        decode_tokens = max(len(raw) - 1, 0)  # the first token comes from the prefill forward
        return TurnResult(list(prompt_ids), _cut_at_eos(raw, eos_ids), wall,
                          steps=max(self.forwards - 1, 0), step_tokens=decode_tokens)


class LlamaCppPeer:
    """llama.cpp on the GGUF file (its own quantised arithmetic); fed the same token ids.

    Not exercised by the tests here (``llama_cpp`` is not a dependency)."""

    def __init__(self, gguf: Path, threads: int | None, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_threads=threads, n_ctx=n_ctx, verbose=False)

    def run(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: Sequence[int],
            temperature: float = 0.0, seed: int = 0) -> TurnResult:
        eos = set(eos_ids) | {self.llm.token_eos()}
        raw: list[int] = []
        t0 = time.perf_counter()
        if max_new_tokens > 0:
            if temperature > 0:
                self.llm.set_seed(seed)
            for tok in self.llm.generate(list(prompt_ids), temp=temperature, top_k=0, top_p=1.0,
                                         min_p=0.0, repeat_penalty=1.0, reset=True):
                raw.append(int(tok))
                if tok in eos or len(raw) >= max_new_tokens:
                    break
        wall = time.perf_counter() - t0
        n = max(len(raw) - 1, 0)
        return TurnResult(list(prompt_ids), _cut_at_eos(raw, eos), wall, steps=n, step_tokens=n)


def make_peer(method: str, model: LlamaForCausalLM, *, gguf: Path | None = None,
              threads: int | None = None, n_ctx: int = 4096, hf_model=None):
    """A peer from its method name (``hf``, ``hf-pld[:N]``, ``llama_cpp``)."""
    name, _, arg = method.partition(":")
    if name == "hf" and not arg:
        return HFPeer(model, 0, hf_model)
    if name == "hf-pld":
        n = int(arg) if arg else PLD_TOKENS
        if n < 1:
            raise ValueError(f"hf-pld needs at least 1 lookup token, got {method!r}")
        return HFPeer(model, n, hf_model)
    if name == "llama_cpp" and not arg:
        if "llama_cpp" not in available_peers():
            raise ValueError("method llama_cpp needs the llama_cpp package (pip install "
                             "llama-cpp-python)")
        if gguf is None or Path(gguf).suffix != ".gguf":
            raise ValueError("method llama_cpp needs a GGUF model")
        return LlamaCppPeer(Path(gguf), threads, n_ctx)
    raise ValueError(f"unknown peer {method!r}; peers: {', '.join(PEERS)}")
