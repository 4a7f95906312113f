"""EAGLE-1 draft head: ``fc(concat(embed(next token), feature))`` -> one decoder layer -> LM head.

The head predicts the target's next final-normed hidden state ("feature"). Pair i of a
sequence is (feature f_i, token t_{i+1}) at position i; its output f̂_{i+1} goes through the
target's frozen LM head to give the draft distribution of t_{i+2}. The decoder layer has no
input norm (EAGLE-1's layer 0); its post-attention norm, attention and MLP are the runtime's
own modules. The embedding and LM head are the target's, shared and frozen (``bind``).

Inference (``forward_tree``, ``logits``) runs on packed copies of the weights through
``ops.linear`` (``eagle_head_packed.py``): the layer weights are packed (``layer_format``: Q8_0
by default, or "exact") from the parameters' current values on first use and repacked whenever
a parameter or the format changes; the LM-head rows are the target's own packed rows (or its
dense rows, packed) sliced to the draft vocabulary at ``bind``. A packed forward is one
``ops.eagle_head_layer`` call when the op takes the head (head dim 64 or 128).
Under autograd (grad enabled and parameters that require grad) both fall back to the
parameters and ``F.linear``; training (``forward_train``, ``head_weight``) never packs.

Optional reduced draft vocabulary: ``draft_vocab`` int64 [Nd] lists the target ids the head can
draft (a stored draft -> target id map); its LM head is the matching rows of the target's.

Saved as safetensors (weights + a JSON config in the metadata); never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from adaeagle_ext import ops, ref
from adaeagle_ext._build import extension_available
from adaeagle_ext.drafters.eagle_head_packed import (
    DEFAULT_LAYER_FORMAT,
    PackedHeadLayers,
    pack_exact,
    slice_rows,
)
from adaeagle_ext.drafters.weights_file import read_weights_file
from adaeagle_ext.models.attention import KERNEL_HEAD_DIMS, tree_attention
from adaeagle_ext.models.config import LlamaConfig
from adaeagle_ext.models.kv_cache import KVCache
from adaeagle_ext.models.llama import MLP, Attention, RMSNorm, fused_rope_applies, rope_cos_sin
from adaeagle_ext.packed import PackedWeight

FORMAT = "adaeagle-eagle-head-v1"

# Packed drafting runs the whole head forward as one ``ops.eagle_head_layer`` call.
_FUSED_HEAD = extension_available()


@dataclass
class EagleHeadConfig:
    """Shapes of the head (copied from its target) plus the draft vocabulary size."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    vocab_size: int  # the target's
    draft_vocab_size: int  # == vocab_size when the vocabulary is not reduced
    target_fingerprint: float | None = None  # see ``embedding_fingerprint``

    @classmethod
    def from_target(cls, target: LlamaConfig, draft_vocab_size: int | None = None,
                    fingerprint: float | None = None) -> EagleHeadConfig:
        return cls(target.hidden_size, target.intermediate_size, target.num_heads,
                   target.num_kv_heads, target.head_dim, target.rms_norm_eps, target.rope_theta,
                   target.rope_scaling, target.max_position_embeddings, target.vocab_size,
                   draft_vocab_size or target.vocab_size, fingerprint)

    def llama_config(self) -> LlamaConfig:
        """A one-layer LlamaConfig (for the runtime's modules and the KV cache layout)."""
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=1, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta, rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings)

    def mismatch(self, target: LlamaConfig) -> list[str]:
        """The fields that disagree with ``target`` (empty when the head fits it)."""
        want = EagleHeadConfig.from_target(target)
        fields = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                  "vocab_size")
        return [f"{f}: head {getattr(self, f)} vs target {getattr(want, f)}"
                for f in fields if getattr(self, f) != getattr(want, f)]


def dense_embedding(target) -> torch.Tensor:
    """The target's embedding matrix [V, H] in its dtype (dequantised when packed)."""
    emb = target.model.embed_tokens
    w = emb.dense_weight() if hasattr(emb, "dense_weight") else emb.weight
    return w.detach().to(target.dtype)


def packed_lm_head(target) -> PackedWeight | None:
    """The target's LM head as packed rows [V, H] (the tied embedding or the untied head), or
    None when it is dense."""
    head = target.model.embed_tokens if target.lm_head is None else target.lm_head
    return getattr(head, "weight_packed", None)


def embedding_fingerprint(target) -> float:
    """A number that tells targets of equal shape apart: the float64 sum of |embed[:256]|."""
    rows = target.model.embed_tokens(torch.arange(min(256, target.config.vocab_size)))
    return float(rows.detach().double().abs().sum())


def unrolled_mask(length: int, step: int, device=None) -> torch.Tensor:
    """Bool [L, (step+1)*L]: at unrolled step ``step``, row i sees true pairs 0..i and its own
    rows of steps 1..step (see ``EagleHead.forward_train_unrolled``)."""
    idx = torch.arange(length, device=device)
    causal = idx[None, :] <= idx[:, None]
    own = torch.eye(length, dtype=torch.bool, device=device)
    return torch.cat([causal] + [own] * step, dim=1)


class EagleHead(nn.Module):
    """The trainable part (fc, attention, post-attention norm, MLP) plus the bound target
    tensors (embedding [V, H], LM-head rows [Nd, H]) that are never trained or saved."""

    def __init__(self, config: EagleHeadConfig, draft_vocab: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        lc = config.llama_config()
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.self_attn = Attention(lc, 0)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.mlp = MLP(lc)
        if draft_vocab is not None:
            draft_vocab = draft_vocab.to(torch.int64)
            if draft_vocab.numel() != config.draft_vocab_size:
                raise ValueError(f"draft_vocab holds {draft_vocab.numel()} ids, the config says "
                                 f"{config.draft_vocab_size}")
        elif config.draft_vocab_size != config.vocab_size:
            raise ValueError("a reduced draft vocabulary needs its draft_vocab id map")
        self.register_buffer("draft_vocab", draft_vocab, persistent=False)
        self.register_buffer("inv_freq", lc.inv_freq(), persistent=False)
        self.embed: torch.Tensor | None = None
        self.head_weight: torch.Tensor | None = None
        self.bound_to = None
        self.packed_inference = True  # False: inference runs the parameters (F.linear)
        self.layer_format = DEFAULT_LAYER_FORMAT  # of the packed layers: "q8_0" or "exact"
        self.head_packed: PackedWeight | None = None  # LM-head rows [Nd, H], set by bind
        self._packed_layers: PackedHeadLayers | None = None
        self._packed_key: tuple | None = None
        # (module, name) of every parameter: its current tensor is read at each forward, so
        # a replaced parameter is noticed too (cheaper than walking ``parameters()``).
        self._param_slots = [(m, n) for m in self.modules() for n in m._parameters]

    # --- binding to the target ------------------------------------------------------------

    def bind(self, target) -> EagleHead:
        """Share ``target``'s embedding and LM head (frozen) and take its dtype. Returns self.

        Raises ValueError when the head's shapes do not fit the target.
        """
        bad = self.config.mismatch(target.config)
        if bad:
            raise ValueError("the EAGLE head does not fit this target: " + "; ".join(bad))
        self.to(target.dtype)
        self.inv_freq = self.config.llama_config().inv_freq()  # RoPE stays float32
        self.embed = dense_embedding(target)
        head = target.lm_head_weight().detach().to(target.dtype)
        self.head_weight = head if self.draft_vocab is None else head[self.draft_vocab]
        packed = packed_lm_head(target)
        self.head_packed = (pack_exact(self.head_weight) if packed is None
                            else slice_rows(packed, self.draft_vocab))
        self._packed_layers = self._packed_key = None
        self.bound_to = weakref.ref(target)
        return self

    def _autograd(self) -> bool:
        return torch.is_grad_enabled() and self.fc.weight.requires_grad

    def packed_layers(self) -> PackedHeadLayers | None:
        """The packed inference copy of the layer weights in ``layer_format``, (re)packed when
        it or a parameter has changed since the last call; None when inference should run the
        parameters (``packed_inference`` off, or autograd on)."""
        if not self.packed_inference or self._autograd():
            return None
        params = (m._parameters[n] for m, n in self._param_slots)
        # Inference tensors (a head loaded under torch.inference_mode) keep no version
        # counter; their changes in place go unseen, a replaced tensor is still noticed.
        key = (self.layer_format,
               *((p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype)
                 for p in params if p is not None))
        if key != self._packed_key:
            self._packed_layers = PackedHeadLayers.from_head(self, self.layer_format)
            self._packed_key = key
        return self._packed_layers

    def is_bound_to(self, target) -> bool:
        return self.bound_to is not None and self.bound_to() is target

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def reduced(self) -> bool:
        return self.draft_vocab is not None

    def new_cache(self, batch: int, max_seq_len: int) -> KVCache:
        """The head's own KV cache, ``[1, 2, B, S_max, Hkv, D]`` like the target's."""
        return KVCache(self.config.llama_config(), batch, max_seq_len, self.dtype,
                       self.fc.weight.device)

    # --- forward --------------------------------------------------------------------------

    def fuse(self, tokens: torch.Tensor, features: torch.Tensor,
             packed: PackedHeadLayers | None = None) -> torch.Tensor:
        """fc(concat(embed(tokens), features)): tokens int64 [...], features [..., H]."""
        emb = F.embedding(tokens, self.embed)
        cat = torch.cat([emb, features.to(emb.dtype)], dim=-1)
        return self.fc(cat) if packed is None else packed.fc.linear(cat, packed.fc_bias)

    def _finish(self, x: torch.Tensor, attn: torch.Tensor,
                packed: PackedHeadLayers | None = None) -> torch.Tensor:
        if packed is None:
            h = x + self.self_attn.o_proj(attn)
            return h + self.mlp(self.post_attention_layernorm(h))
        h = x + packed.o.linear(attn, packed.o_bias)
        return h + packed.mlp(self.post_attention_layernorm(h))

    def forward_tree(self, tokens, features, positions, cache: KVCache, prefix_lens,
                     tree_indptr, mask_bits, new_index=None, *,
                     cache_slots: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor:
        """Run new draft nodes of a ragged batch over the head's cache; write their K/V.

        The call covers N nodes per CSR (``tree_indptr`` [B+1], ``mask_bits`` int64 [N]); node
        j of request b has its K/V at row ``prefix_lens[b] + local j``. Only the M nodes
        ``new_index`` (int64 [M], default all) are computed; the others were run by an earlier
        call and their K/V are already in the cache.

        Args:
            tokens: int64 [M]; features [M, H]; positions int64 [M] (of the new nodes).
            cache: the head's KVCache (``cache.lens`` is not changed).
            prefix_lens: int32 [B].
            cache_slots: optional (req, rows), int64 [M] each: the new nodes' requests and
                cache rows (``prefix_lens[b] + local j``), when the caller has them at hand;
                they are then not recomputed here (the cache write still checks them).

        Returns:
            predicted next features [M, H] (head dtype).
        """
        packed = self.packed_layers()
        req, rows = cache_slots or self._cache_slots(cache, prefix_lens, tree_indptr, new_index)
        buf = cache.buf
        attn = self.self_attn
        if packed is not None and self._fused_step_applies(buf):
            m = tokens.shape[0]
            cos, sin = rope_cos_sin(positions, self.inv_freq, self.embed.dtype)
            return ops.eagle_head_layer(
                tokens, features.to(self.embed.dtype), self.embed, *packed.op_args,
                self.post_attention_layernorm.weight, cos.view(m, -1), sin.view(m, -1), buf,
                req, rows, prefix_lens, tree_indptr, mask_bits, new_index, attn.num_heads,
                attn.num_kv_heads,
                self.post_attention_layernorm.eps, attn.scale)
        x = self.fuse(tokens, features, packed)
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        if packed is None:
            q, k, v = attn.project(x, cos, sin)
            buf[0, 0, req, rows] = k.to(buf.dtype)
            buf[0, 1, req, rows] = v.to(buf.dtype)
        else:
            qkv = packed.qkv.linear(x, packed.qkv_bias)
            m = qkv.shape[0]
            store = (ops.rope_store_kv if fused_rope_applies(qkv, cos, sin, buf, req, rows)
                     else ref.rope_store_kv)
            q = store(qkv, cos.view(m, -1), sin.view(m, -1), buf, 0, req, rows, attn.num_heads,
                      attn.num_kv_heads)
        if new_index is None:
            out = tree_attention(q, buf, 0, prefix_lens, tree_indptr, mask_bits,
                                 self.self_attn.scale)
        else:
            q_all = q.new_zeros(mask_bits.shape[0], *q.shape[1:]).index_copy_(0, new_index, q)
            out = tree_attention(q_all, buf, 0, prefix_lens, tree_indptr, mask_bits,
                                 self.self_attn.scale).index_select(0, new_index)
        return self._finish(x, out.reshape(out.shape[0], -1), packed)

    def _fused_step_applies(self, buf: torch.Tensor) -> bool:
        """Whether ``ops.eagle_head_layer`` takes this head and cache (else the step runs op by
        op, with the same bits)."""
        dt = self.embed.dtype
        return (_FUSED_HEAD and dt in (torch.float32, torch.bfloat16)
                and self.config.head_dim in KERNEL_HEAD_DIMS and buf.dtype == dt
                and buf.is_contiguous() and buf.device == self.embed.device
                and self.embed.device.type in ("cpu", "cuda")
                and self.post_attention_layernorm.weight.dtype == dt)

    @staticmethod
    def _cache_slots(cache: KVCache, prefix_lens, tree_indptr,
                     new_index) -> tuple[torch.Tensor, torch.Tensor]:
        """(req, rows), int64 [M] each: the new nodes' requests and cache rows."""
        n = int(tree_indptr[-1])
        indptr = tree_indptr.to(torch.int64)
        sizes = indptr[1:] - indptr[:-1]
        req = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        rows = prefix_lens.to(torch.int64)[req] + torch.arange(n) - indptr[req]
        if new_index is not None:
            rows, req = rows[new_index], req[new_index]
        if rows.numel() and int(rows.max()) >= cache.max_seq_len:
            raise ValueError("the draft cache is too small for this call")
        return req, rows

    def forward_train(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Differentiable causal forward over padded sequences (no cache).

        Args:
            tokens: int64 [B, L], token t_{i+1} of pair i (padding: any id).
            features: [B, L, H], feature f_i of pair i (padding rows come after the real ones).

        Returns:
            predicted features [B, L, H] (row i predicts f_{i+1}).
        """
        return self.forward_train_unrolled(tokens, features, 1)[0]

    def forward_train_unrolled(self, tokens: torch.Tensor, features: torch.Tensor,
                               depth: int) -> list[torch.Tensor]:
        """``depth`` drafting steps per position, each on the head's own previous prediction,
        as inference drafts a chain (training-time test).

        Step 0 is ``forward_train``. At step d >= 1, row i continues the chain started at pair
        i: its input is step d-1's prediction of row i with token t_{i+d+1} (teacher forced),
        at position i + d, attending to the true pairs 0..i and to its own steps 1..d, which
        is what the head's cache holds when it drafts token d+1 after pair i.

        Args:
            tokens: int64 [B, L], token t_{i+1} of pair i (padding: any id).
            features: [B, L, H], feature f_i of pair i.
            depth: steps (>= 1).

        Returns:
            ``depth`` tensors [B, L, H]; entry d, row i predicts f_{i+1+d} (rows whose target
            lies beyond the sequence are meaningless).
        """
        b, length, hidden = features.shape
        a = self.self_attn
        gqa = a.num_heads != a.num_kv_heads
        keys, values, preds = [], [], []
        step_tokens, inputs = tokens, features
        for d in range(depth):
            x = self.fuse(step_tokens, inputs).reshape(b * length, hidden)
            positions = (torch.arange(length) + d).repeat(b)
            cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
            q, k, v = a.project(x, cos, sin)
            q = q.view(b, length, a.num_heads, a.head_dim).transpose(1, 2)
            keys.append(k.view(b, length, a.num_kv_heads, a.head_dim).transpose(1, 2))
            values.append(v.view(b, length, a.num_kv_heads, a.head_dim).transpose(1, 2))
            if d == 0:
                out = F.scaled_dot_product_attention(q, keys[0], values[0], is_causal=True,
                                                     scale=a.scale, enable_gqa=gqa)
            else:
                out = F.scaled_dot_product_attention(
                    q, torch.cat(keys, dim=2), torch.cat(values, dim=2),
                    attn_mask=unrolled_mask(length, d, q.device), scale=a.scale,
                    enable_gqa=gqa)
            out = out.transpose(1, 2).reshape(b * length, -1)
            preds.append(self._finish(x, out).view(b, length, hidden))
            inputs = preds[-1]
            step_tokens = F.pad(tokens[:, d + 1:], (0, d + 1))
        return preds

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Draft logits float32 [..., Nd] (draft-vocabulary order) of predicted features."""
        if self.packed_inference and not self._autograd():
            return self.head_packed.linear(features.to(self.dtype), out_dtype=torch.float32)
        return F.linear(features.to(self.head_weight.dtype), self.head_weight).float()

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices -> target token ids (identity without a reduced vocab)."""
        return draft_ids if self.draft_vocab is None else self.draft_vocab[draft_ids]

    # --- construction, save, load ---------------------------------------------------------

    @classmethod
    def for_target(cls, target, draft_vocab: torch.Tensor | None = None,
                   seed: int | None = None) -> EagleHead:
        """A freshly initialised head bound to ``target`` (random weights, fp32 init)."""
        fp = embedding_fingerprint(target)
        n = None if draft_vocab is None else int(draft_vocab.numel())
        cfg = EagleHeadConfig.from_target(target.config, n, fp)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device("cpu"):
            head = cls(cfg, draft_vocab)
        return head.bind(target)

    def save(self, path: str | Path, dtype: torch.dtype | None = None,
             extra: dict | None = None) -> None:
        """Weights (optionally cast, e.g. bf16) + the config as JSON metadata."""
        tensors = {k: (v.to(dtype) if dtype is not None else v).contiguous()
                   for k, v in self.state_dict().items()}
        if self.draft_vocab is not None:
            tensors["draft_vocab"] = self.draft_vocab.contiguous()
        meta = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(self.config))}
        if extra:
            meta["extra"] = json.dumps(extra)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, target=None) -> EagleHead:
        """Load a head saved by ``save``; bind it when ``target`` is given.

        Raises ValueError naming the file when it is not a head or does not fit the target.
        """
        path, tensors, meta = read_weights_file(path, "EAGLE head", FORMAT)
        try:
            cfg = EagleHeadConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: missing or unusable head config ({e!r})") from None
        draft_vocab = tensors.pop("draft_vocab", None)
        head = cls(cfg, draft_vocab)
        try:
            head.load_state_dict({k: v.float() for k, v in tensors.items()})
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match its config: {e}") from None
        head.requires_grad_(False)
        if target is not None:
            bad = cfg.mismatch(target.config)
            if bad:
                raise ValueError(f"{path}: EAGLE head does not fit the target: " + "; ".join(bad))
            head.bind(target)
        return head.eval()

    def matches(self, target, rel_tol: float = 1e-3) -> bool:
        """True when the head was trained for ``target`` (shapes and embedding fingerprint)."""
        if self.config.mismatch(target.config):
            return False
        fp = self.config.target_fingerprint
        if fp is None:
            return True
        got = embedding_fingerprint(target)
        return abs(got - fp) <= rel_tol * max(abs(fp), 1e-12)
