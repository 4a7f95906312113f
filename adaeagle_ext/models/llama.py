"""Lean Llama-family decoder whose one forward serves prefill, decode and tree verification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaeagle_ext import ops, ref
from adaeagle_ext._build import extension_available
from adaeagle_ext.models.attention import KERNEL_HEAD_DIMS, tree_attention
from adaeagle_ext.models.config import LlamaConfig
from adaeagle_ext.models.kv_cache import KVCache
from adaeagle_ext.models.packed_layers import (
    PackedEmbedding,
    PackedLinear,
    WatchedModule,
    packing_epoch,
    tensor_version,
)
from adaeagle_ext.packed import PackedWeight

_FUSED_NORM = extension_available()
_FUSED_NORM_DTYPES = (torch.float32, torch.bfloat16)
# Packed-qkv attention runs RoPE and the cache write as one ``ops.rope_store_kv`` (same bits);
# False forces the PyTorch code (tests, A/B timing).
_FUSED_ROPE = extension_available()
# All layers as one ``ops.decoder_layers`` call when every layer runs on packed weights (same
# bits as the modules; no Python between the ops). False forces the per-layer modules.
_FUSED_LAYERS = extension_available()


class RMSNorm(WatchedModule):
    """``x / rms(x) * weight``, normalised in float32 and cast back (as HF does).

    Runs the fused, batch-invariant ``ops.rms_norm`` when the extension is built, x and weight
    share a dtype it takes and no gradient is needed; else ``ref.rms_norm``, the same formula in
    PyTorch ops (differentiable).
    """

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (_FUSED_NORM and x.dtype == w.dtype and x.dtype in _FUSED_NORM_DTYPES
                and x.device == w.device and x.device.type in ("cpu", "cuda")
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return ops.rms_norm(x, w, self.eps)
        return ref.rms_norm(x, w, self.eps)


rotate_half = ref.rotate_half  # cat(-x[..., D/2:], x[..., :D/2])


def _rope_compute(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


_ROPE_TABLE_MIN = 4096  # positions in a first table
_ROPE_TABLE_MAX = 1 << 16  # positions past this are computed per call


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """RoPE tables for int64 positions [N]: cos, sin [N, 1, head_dim] in ``dtype``.

    Rows are gathered from a table over positions [0, P) kept on ``inv_freq`` per dtype and
    device (P doubles when a position passes it): computing the ~10 small ops on every call cost
    about 50 us a step. Each table row is computed elementwise exactly as a call for that one
    position would be (a test checks the bits), so the table changes no result."""
    if (positions.dtype != torch.int64 or positions.dim() != 1 or inv_freq.requires_grad
            or positions.numel() == 0):
        return _rope_compute(positions, inv_freq, dtype)
    tables = inv_freq.__dict__.setdefault("_rope_tables", {})
    key = (dtype, positions.device)
    entry = tables.get(key)
    if entry is None or entry[0] != tensor_version(inv_freq):
        entry = _rope_table(inv_freq, dtype, positions.device, _ROPE_TABLE_MIN)
        tables[key] = entry
    try:
        return _rope_rows(entry, positions)
    except IndexError:  # past the table, or negative
        top = int(positions.max())
        if int(positions.min()) < 0 or top >= _ROPE_TABLE_MAX:
            return _rope_compute(positions, inv_freq, dtype)
        size = max(2 * entry[1].shape[0], 1 << top.bit_length())
        entry = _rope_table(inv_freq, dtype, positions.device, min(size, _ROPE_TABLE_MAX))
        tables[key] = entry
        return _rope_rows(entry, positions)


def _rope_rows(entry: tuple, positions: torch.Tensor):
    _, cos, sin = entry
    return cos.index_select(0, positions), sin.index_select(0, positions)


def _rope_table(inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device, size: int):
    cos, sin = _rope_compute(torch.arange(size, device=device), inv_freq.to(device), dtype)
    return tensor_version(inv_freq), cos, sin


def fused_rope_applies(qkv, cos, sin, buf, req, rows) -> bool:
    """Whether ``ops.rope_store_kv`` takes these tensors (else the PyTorch code runs)."""
    dt, dev = qkv.dtype, qkv.device
    return (_FUSED_ROPE and dt in _FUSED_NORM_DTYPES and cos.dtype == dt and sin.dtype == dt
            and buf.dtype == dt and dev.type in ("cpu", "cuda") and buf.device == dev
            and cos.device == dev and req.device == dev and rows.device == dev
            and buf.is_contiguous()
            and not (torch.is_grad_enabled() and qkv.requires_grad))


class Attention(WatchedModule):
    def __init__(self, config: LlamaConfig, layer: int):
        super().__init__()
        c = config
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size,
                                bias=c.attention_out_bias)
        self.scale = c.head_dim ** -0.5
        self.qkv_packed: PackedWeight | None = None  # set by fuse_packed
        self.qkv_bias: torch.Tensor | None = None

    def fuse_packed(self) -> None:
        """When q/k/v run on packed weights of one type, run them as one ``ops.linear`` over
        the stacked rows (every output element is summed on its own, so the bits are the
        same); the three layers keep views of the stacked rows."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        fused = _stack_packed(projs)
        if fused is None:
            return
        self.qkv_packed = fused
        if any(p.bias is not None for p in projs):
            self.qkv_bias = torch.cat([torch.zeros(p.out_features) if p.bias is None
                                       else p.bias for p in projs])

    def project(self, x, cos, sin):
        """q [N, heads, D], k and v [N, kv_heads, D] of rows x [N, hidden], RoPE applied."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def forward(self, x, cos, sin, rows, batch):
        n = x.shape[0]
        buf = batch.cache.buf
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_packed is None:
            q, k, v = self.project(x, cos, sin)
            buf[self.layer, 0, batch.req, rows] = k if k.dtype == buf.dtype else k.to(buf.dtype)
            buf[self.layer, 1, batch.req, rows] = v if v.dtype == buf.dtype else v.to(buf.dtype)
        else:
            qkv = self.qkv_packed.linear(x, self.qkv_bias)
            store = (ops.rope_store_kv if fused_rope_applies(qkv, cos, sin, buf, batch.req, rows)
                     else ref.rope_store_kv)  # the same bits in PyTorch ops
            q = store(qkv, cos.view(n, d), sin.view(n, d), buf, self.layer, batch.req, rows, h,
                      kv)
        out = tree_attention(q, buf, self.layer, batch.prefix_lens, batch.tree_indptr,
                             batch.mask_bits, self.scale)
        return self.o_proj(out.reshape(n, -1))


class MLP(WatchedModule):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up_packed: PackedWeight | None = None  # set by fuse_packed

    def fuse_packed(self) -> None:
        """gate and up as one ``ops.linear`` over their stacked packed rows (same bits)."""
        self.gate_up_packed = _stack_packed((self.gate_proj, self.up_proj))

    def forward(self, x):
        if self.gate_up_packed is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = self.gate_up_packed.linear(x)
        inter = gate_up.shape[-1] // 2
        return self.down_proj(F.silu(gate_up[:, :inter]) * gate_up[:, inter:])


def _stack_packed(layers) -> PackedWeight | None:
    """One PackedWeight of the layers' stacked rows when all are PackedLinear of one ggml type
    and input size (each layer then holds a view of its rows), else None."""
    if not all(isinstance(m, PackedLinear) for m in layers):
        return None
    weights = [m.weight_packed for m in layers]
    if len({(w.ggml_type, w.shape[1], w.data.device) for w in weights}) != 1:
        return None
    data = torch.cat([w.data for w in weights])
    fused = PackedWeight(data, weights[0].ggml_type, (data.shape[0], weights[0].shape[1]))
    start = 0
    for m, w in zip(layers, weights, strict=True):
        m.weight_packed = PackedWeight(data[start:start + w.shape[0]], w.ggml_type, w.shape)
        start += w.shape[0]
    return fused


class DecoderLayer(WatchedModule):
    def __init__(self, config: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, rows, batch):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, rows, batch)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Batch:
    """Per-call attention inputs shared by all layers."""

    def __init__(self, cache, prefix_lens, tree_indptr, mask_bits, req):
        self.cache, self.prefix_lens, self.tree_indptr = cache, prefix_lens, tree_indptr
        self.mask_bits, self.req = mask_bits, req


class LlamaModel(nn.Module):
    """Decoder with HF parameter names (``model.layers.0.self_attn.q_proj.weight``, ...)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        weight = torch.empty(config.vocab_size, config.hidden_size)
        if weight.device.type != "meta":  # nn.Embedding's init; on meta (build_model) there
            nn.init.normal_(weight)       # is nothing to draw, and normal_ there costs seconds
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The target model: ``forward`` runs new tokens of a ragged batch of chains or trees."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", config.inv_freq(), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Activation (and KV cache) dtype."""
        return self.model.norm.weight.dtype

    @property
    def packed(self) -> bool:
        """True when the linear layers run on packed GGUF weights (``ops.linear``)."""
        return isinstance(self.model.layers[0].mlp.down_proj, PackedLinear)

    def _head(self) -> nn.Module:
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    def lm_head_weight(self) -> torch.Tensor:
        """[V, H] in the model dtype: the untied head or the (tied) embedding matrix
        (dequantised when packed)."""
        head = self._head()
        if isinstance(head, (PackedLinear, PackedEmbedding)):
            return head.dense_weight().to(self.dtype)
        return head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 [N, V] from final-normed hidden [N, H]."""
        head = self._head()
        if isinstance(head, (PackedLinear, PackedEmbedding)):
            return head.weight_packed.linear(hidden, out_dtype=torch.float32)
        return F.linear(hidden, head.weight).float()

    def _decoder_layers_args(self, x: torch.Tensor, buf: torch.Tensor):
        """(norms, weights, ggml_types, act_quants, qkv_biases) for ``ops.decoder_layers``
        when it can run every layer of this forward (packed fused q/k/v and gate/up, bias-free
        o and down, fused norm and RoPE ops taking these tensors), else None."""
        dt, dev = x.dtype, x.device
        if not (_FUSED_LAYERS and _FUSED_NORM and _FUSED_ROPE and dt in _FUSED_NORM_DTYPES
                and self.config.head_dim in KERNEL_HEAD_DIMS and buf.dtype == dt
                and buf.device == dev and buf.is_contiguous() and x.is_contiguous()
                and (dev.type == "cpu" or (dev.type == "cuda" and not ops._flash_attn_applies(
                    None, x, ops.ATTN_FULL)))):
            return None
        # Walking 30 layers costs about 0.15 ms: the result is kept until an attribute of a
        # layer module changes (packing_epoch) or the dtype, device or layer count does.
        key = (dt, dev, packing_epoch(), len(self.model.layers), self.model.norm.weight.dtype)
        cached = self.__dict__.get("_fused_args")
        if cached is not None and cached[0] == key:
            return cached[1]
        args = self._collect_decoder_layers_args(dt, dev)
        self.__dict__["_fused_args"] = (key, args)
        return args

    def _collect_decoder_layers_args(self, dt: torch.dtype, dev: torch.device):
        norms, packed, biases = [], [], []
        for in_norm, post_norm, attn, mlp, o, down in self._layer_parts():
            if (attn.qkv_packed is None or mlp.gate_up_packed is None
                    or not isinstance(o, PackedLinear) or not isinstance(down, PackedLinear)
                    or o.bias is not None or down.bias is not None):
                return None
            norms += (in_norm._parameters["weight"], post_norm._parameters["weight"])
            packed += (attn.qkv_packed, o.weight_packed, mlp.gate_up_packed, down.weight_packed)
            biases.append(attn.qkv_bias)
        if any(w.dtype != dt or w.device != dev for w in norms):
            return None
        return (norms, [p.data for p in packed], [p.ggml_type for p in packed],
                [p.act_quant for p in packed], biases)

    def _layer_parts(self) -> list[tuple]:
        """Per layer (input norm, post-attention norm, attention, MLP, o_proj, down_proj),
        collected again only when a layer module's attribute was set (packing_epoch) or the
        layer count changed: walking the modules costs more than a third of a millisecond a
        step. (Replacing an element of ``model.layers`` in place is not seen.)"""
        key = (packing_epoch(), len(self.model.layers))
        cached = self.__dict__.get("_parts")
        if cached is None or cached[0] != key:
            parts = [(layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn,
                      layer.mlp, layer.self_attn.o_proj, layer.mlp.down_proj)
                     for layer in self.model.layers]
            cached = (key, parts)
            self.__dict__["_parts"] = cached
        return cached[1]

    def new_cache(self, batch: int, max_seq_len: int) -> KVCache:
        """An empty static cache for ``batch`` requests of up to ``max_seq_len`` tokens."""
        return KVCache(self.config, batch, max_seq_len, self.dtype,
                       self.model.norm.weight.device)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tree_indptr: torch.Tensor,
        mask_bits: torch.Tensor,
        prefix_lens: torch.Tensor,
        cache: KVCache,
        logit_rows: torch.Tensor | None = None,
    ):
        """Run N new tokens of B requests; write their K/V at ``prefix_lens[b] + local id``.

        Args:
            tokens: int64 [N], the nodes of all requests in CSR order.
            positions: int64 [N], RoPE positions (``prefix_len + depth`` for a tree).
            tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``
                (at most 64; a request may own none).
            mask_bits: int64 [N], ancestor bit rows (see ``build_tree``).
            prefix_lens: int32 [B], cached tokens of each request before its nodes.
            cache: the KVCache with B requests (``cache.lens`` is not changed here).
            logit_rows: optional int64 [M], the rows whose logits are wanted (all by default).

        Returns:
            logits float32 [N or M, V], hidden [N, H] (final-normed, model dtype).
        """
        n = tokens.numel()
        b = tree_indptr.numel() - 1
        if b != cache.batch or prefix_lens.numel() != b:
            raise ValueError(
                f"tree_indptr has {b} requests, prefix_lens {prefix_lens.numel()}, "
                f"the cache {cache.batch}"
            )
        if positions.numel() != n or mask_bits.numel() != n or int(tree_indptr[-1]) != n:
            raise ValueError(f"tokens, positions, mask_bits and tree_indptr[-1] must all be {n}")
        indptr = tree_indptr.to(torch.int64)
        sizes = indptr[1:] - indptr[:-1]
        if n and int((prefix_lens.to(torch.int64) + sizes).max()) > cache.max_seq_len:
            raise ValueError(f"the cache holds {cache.max_seq_len} tokens per request; "
                             "this forward would write past it")
        req = torch.repeat_interleave(torch.arange(b), sizes)
        rows = prefix_lens.to(torch.int64)[req] + torch.arange(n) - indptr[req]
        batch = _Batch(cache, prefix_lens, tree_indptr, mask_bits, req)

        cos, sin = rope_cos_sin(positions, self.inv_freq, self.dtype)

        x = self.model.embed_tokens(tokens)
        fused = self._decoder_layers_args(x, cache.buf)
        if fused is not None:
            c = self.config
            ops.decoder_layers(x, *fused, cos.view(n, -1), sin.view(n, -1), cache.buf, req,
                               rows, prefix_lens, tree_indptr, mask_bits, c.num_heads,
                               c.num_kv_heads, c.rms_norm_eps, c.head_dim ** -0.5)
        else:
            for layer in self.model.layers:
                x = layer(x, cos, sin, rows, batch)
        hidden = self.model.norm(x)
        head_in = hidden if logit_rows is None else hidden[logit_rows]
        return self.logits(head_in), hidden


def build_model(config: LlamaConfig, weights: dict[str, torch.Tensor],
                dtype: torch.dtype = torch.float32,
                packed: dict[str, PackedWeight] | None = None) -> LlamaForCausalLM:
    """A LlamaForCausalLM holding ``weights`` (HF names, any float dtype) cast to ``dtype``.

    ``packed`` maps HF names of 2-D weights (linear layers, the embedding, an untied LM head) to
    packed GGUF weights that stay packed: those layers then run on ``ops.linear`` and
    ``dtype`` is only the activation and KV cache dtype.

    Raises ValueError naming missing or unexpected tensors.
    """
    packed = dict(packed or {})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    wanted = set(model.state_dict().keys())
    given = dict(weights)
    if config.tie_word_embeddings:
        given.pop("lm_head.weight", None)
        packed.pop("lm_head.weight", None)
    missing = sorted(wanted - given.keys() - packed.keys())
    extra = sorted(k for k in (given.keys() | packed.keys()) - wanted
                   if not k.endswith("rotary_emb.inv_freq"))
    if missing or extra:
        raise ValueError(f"weights do not match the config: missing {missing[:8]}, "
                         f"unexpected {extra[:8]}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: {tuple(t.shape)} (expected {shapes[k]})"
             for k, t in [*given.items(), *packed.items()]
             if k in shapes and tuple(t.shape) != shapes[k]]
    if wrong:
        raise ValueError(f"weights do not match the config's shapes: {'; '.join(wrong[:8])}")
    state = {k: given[k].to(dtype) for k in wanted - packed.keys()}
    model.load_state_dict(state, assign=True, strict=False)
    for name, weight in packed.items():
        module_name = name.removesuffix(".weight")
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(getattr(parent, child), nn.Embedding):
            setattr(parent, child, PackedEmbedding(weight, dtype))
        else:
            setattr(parent, child, PackedLinear(weight, given.get(module_name + ".bias")))
    model.inv_freq = config.inv_freq()
    for layer in model.model.layers:
        layer.self_attn.fuse_packed()
        layer.mlp.fuse_packed()
    model.requires_grad_(False)
    return model.eval()
