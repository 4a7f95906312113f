"""GGUF checkpoints (llama.cpp format): config from metadata, weights packed or dequantised.

Packed tensors stay available (``GGUFCheckpoint.packed``) for the ``linear`` op that runs on
Q4_1 / Q8_0 / ... weights directly; their rows are already in HF order (the llama.cpp q/k
row permutation is undone on the packed rows too, as each row is quantised on its own).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adaeagle_ext.models.config import LlamaConfig
from adaeagle_ext.models.gguf_file import GGUFFormatError, GGUFHeader, TensorInfo, read_header

try:
    import gguf
    from gguf import GGMLQuantizationType as GGMLType
except ImportError as e:  # pragma: no cover - gguf is a dependency
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e

SUPPORTED_TYPES = (
    GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1,
    GGMLType.Q4_K, GGMLType.Q6_K,
)
SUPPORTED_ARCHS = ("llama", "qwen2")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(ValueError):
    """A GGUF file that cannot be read or does not describe a supported model."""


@dataclass
class PackedTensor:
    """One weight as stored in the file.

    name: HF parameter name. ggml_type: its GGMLQuantizationType. shape: logical shape
    ((out, in) for a matrix, (n,) for a vector). data: uint8 numpy [rows, row_bytes] with rows
    in HF order (a vector is one row).
    """

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def dequantize(self) -> torch.Tensor:
        """float32 tensor of ``shape``."""
        values = gguf.quants.dequantize(self.data, self.ggml_type)
        return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(self.shape)


class GGUFCheckpoint:
    """A parsed GGUF file: ``config``, ``packed`` (HF name -> PackedTensor), ``metadata``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header, self._file = _open(self.path)
        self.metadata = header.metadata
        self.has_tokenizer = "tokenizer.ggml.tokens" in header.keys
        self.arch = self.metadata.get("general.architecture")
        if self.arch not in SUPPORTED_ARCHS:
            raise GGUFError(f"{self.path}: architecture {self.arch!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        names = {t.name for t in header.tensors}
        if "rope_freqs.weight" in names:
            raise GGUFError(f"{self.path}: per-frequency RoPE factors (rope_freqs) are not "
                            "supported")
        embed = [t for t in header.tensors if t.name == "token_embd.weight"]
        if not embed or len(embed[0].dims) != 2:
            raise GGUFError(f"{self.path}: tensor token_embd.weight is missing or not 2-D")
        try:
            self.config = self._config(names, int(embed[0].dims[1]))
            self.packed: dict[str, PackedTensor] = {}
            for t in header.tensors:
                self.packed[_hf_name(t.name, self.path)] = self._packed(t)
        except GGUFError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
            # corrupt metadata (e.g. head counts that do not divide) or tensor descriptions
            raise GGUFError(f"{self.path}: not a usable model (corrupt metadata?): {e}") from e

    def _config(self, names: set[str], vocab: int) -> LlamaConfig:
        m, a = self.metadata, self.arch

        def need(key):
            if f"{a}.{key}" not in m:
                raise GGUFError(f"{self.path}: metadata key {a}.{key} is missing")
            return m[f"{a}.{key}"]

        scaling = None
        kind = m.get(f"{a}.rope.scaling.type")
        if kind and kind != "none":
            if kind != "linear":
                raise GGUFError(f"{self.path}: RoPE scaling {kind!r} is not supported")
            scaling = {"rope_type": "linear", "factor": float(m[f"{a}.rope.scaling.factor"])}
        eos = m.get("tokenizer.ggml.eos_token_id")
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=int(need("embedding_length")),
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=int(need("attention.head_count")),
            num_kv_heads=int(m.get(f"{a}.attention.head_count_kv", need("attention.head_count"))),
            head_dim=m.get(f"{a}.attention.key_length"),
            rms_norm_eps=float(m.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(m.get(f"{a}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            max_position_embeddings=int(m.get(f"{a}.context_length", 2048)),
            tie_word_embeddings="output.weight" not in names,
            attention_bias="blk.0.attn_q.bias" in names,
            attention_out_bias="blk.0.attn_output.bias" in names,
            bos_token_id=m.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[] if eos is None else [int(eos)],
        )
        return cfg

    def _packed(self, t: TensorInfo) -> PackedTensor:
        try:
            ggml_type = GGMLType(t.ggml_type)
        except ValueError:
            raise GGUFError(f"{self.path}: tensor {t.name} has an unknown type number "
                            f"{t.ggml_type} (corrupt?)") from None
        if ggml_type not in SUPPORTED_TYPES:
            raise GGUFError(
                f"{self.path}: tensor {t.name} has type {ggml_type.name}, which is not "
                f"supported (supported: {', '.join(x.name for x in SUPPORTED_TYPES)})")
        shape = tuple(reversed(t.dims))
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        if shape[-1] % block:
            raise GGUFError(f"{self.path}: tensor {t.name} has rows of {shape[-1]} values, not "
                            f"a multiple of {ggml_type.name}'s block of {block}")
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        row_bytes = shape[-1] // block * type_size
        if t.offset + rows * row_bytes > self._file.size:
            raise GGUFError(f"{self.path}: tensor {t.name} runs past the end of the file "
                            "(truncated download?)")
        data = self._file[t.offset:t.offset + rows * row_bytes].reshape(rows, row_bytes)
        if self.arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = self.config.num_heads if "attn_q" in t.name else self.config.num_kv_heads
            order = _unpermute_rows(shape[0], heads)
            if len(shape) > 1:
                data = data[order]
            elif block == 1:  # a bias vector: permute its elements
                data = data.reshape(shape[0], -1)[order].reshape(1, -1)
            else:
                raise GGUFError(f"{self.path}: quantised bias {t.name} is not supported")
        return PackedTensor(_hf_name(t.name, self.path), ggml_type, shape,
                            np.ascontiguousarray(data))

    def state_dict(self, progress: bool = False) -> dict[str, torch.Tensor]:
        """Every weight dequantised to float32 (HF names and layout)."""
        items = tqdm(self.packed.items(), desc="dequantising", unit="tensor",
                     disable=not progress)
        return {name: p.dequantize() for name, p in items}

    def native_state_dict(self, progress: bool = False):
        """(float32 weights, packed weights): every 2-D weight that ``ops.linear`` runs as
        stored stays packed (a ``PackedWeight`` over the file's blocks); the rest (norms,
        biases, unsupported block types such as Q4_K) is dequantised."""
        from adaeagle_ext.models.packed_layers import packable
        from adaeagle_ext.packed import PackedWeight

        floats: dict[str, torch.Tensor] = {}
        packed: dict[str, PackedWeight] = {}
        items = tqdm(self.packed.items(), desc="loading", unit="tensor", disable=not progress)
        for name, p in items:
            if packable(int(p.ggml_type), p.shape):
                with warnings.catch_warnings():  # a read-only view of the file: never written
                    warnings.simplefilter("ignore", UserWarning)
                    data = torch.from_numpy(np.ascontiguousarray(p.data).view(np.uint8))
                packed[name] = PackedWeight(data, int(p.ggml_type), tuple(p.shape))
            else:
                floats[name] = p.dequantize()
        return floats, packed

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights as stored (packed)."""
        return sum(p.nbytes for p in self.packed.values())


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Parse a GGUF file (config + packed tensors; nothing is dequantised yet)."""
    return GGUFCheckpoint(path)


def _skipped_metadata(key: str) -> bool:
    """The tokenizer's vocabulary arrays: read by the tokenizer, not by the model."""
    return key.startswith("tokenizer.ggml.") and not key.endswith("_id")


def _open(path: Path) -> tuple[GGUFHeader, np.ndarray]:
    """The file's header and a read-only uint8 memory map of the whole file."""
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except ValueError as e:  # numpy cannot map an empty file
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or empty): {e}") from e
    try:
        header = read_header(data, skip=_skipped_metadata)
    except GGUFFormatError as e:
        kind = "truncated" if e.truncated else "corrupt"
        raise GGUFError(f"{path}: not a readable GGUF file ({kind}): {e}") from e
    return header, data


def _hf_name(name: str, path: Path) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise GGUFError(f"{path}: tensor {name!r} is not part of a supported Llama-family model")


def _unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Row order that turns llama.cpp's interleaved-RoPE q/k rows back into HF's rotate-half.

    llama.cpp stores ``permute(w)[i] = w[perm[i]]`` with ``perm`` grouping each head's rows as
    (pair, half) -> (half, pair); indexing the stored rows by ``argsort(perm)`` inverts it.
    """
    perm = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
    return np.argsort(perm)
