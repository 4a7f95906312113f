"""Pure-PyTorch reference of every op: readable, fp32, the ground truth for the tests.

Trees follow the conventions of ``ops.py``: a ragged batch of parent arrays in CSR form
(``tree_indptr [B+1]``), local node 0 of each request is the root (parent -1), parents come
before their children, and a tree holds at most 64 nodes so an ancestor set is one int64 row.
"""

from __future__ import annotations

import bisect
import math

import torch

MAX_TREE_NODES = 64

ATTN_FULL = 0
ATTN_PREFIX_ONLY = 1
ATTN_TREE_ONLY = 2

VERIFY_CHAIN = 0
VERIFY_TREE_RECURSIVE = 1
VERIFY_TOPK = 2


def _to_int64_bits(row: int) -> int:
    """Map an unsigned 64-bit pattern onto the int64 with the same bits."""
    return row - (1 << 64) if row >= (1 << 63) else row


def build_tree(
    parents: torch.Tensor,
    tree_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_depth: int,
    max_leaves: int,
):
    """Reference of ``ops.build_tree``.

    Args:
        parents: int32 [N], local parent of each node, -1 for the root.
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        prefix_lens: int32 [B], committed tokens before the root.
        max_depth: the deepest depth allowed (root is depth 0).
        max_leaves: the most leaves a request may have.

    Returns:
        mask_bits int64 [N] (bit j of row i: local node j is i itself or an ancestor of i),
        depth int32 [N], positions int64 [N] (``prefix_len + depth``),
        first_child int32 [N], next_sibling int32 [N] (local ids, -1 for none),
        leaf_paths int32 [B, max_leaves, max_depth+1] (root-to-leaf local ids, leaves in index
        order, -1 padded), num_leaves int32 [B].
    """
    parents_l = parents.tolist()
    indptr = tree_indptr.tolist()
    prefix = prefix_lens.tolist()
    n = len(parents_l)
    batch = len(indptr) - 1
    mask_bits = [0] * n
    depth = [0] * n
    positions = [0] * n
    first_child = [-1] * n
    next_sibling = [-1] * n
    leaf_paths = torch.full((batch, max_leaves, max_depth + 1), -1, dtype=torch.int32)
    num_leaves = [0] * batch
    for b in range(batch):
        start, end = indptr[b], indptr[b + 1]
        size = end - start
        rows = [0] * size
        for i in range(size):
            p = parents_l[start + i]
            rows[i] = (1 << i) | (rows[p] if i > 0 else 0)
            depth[start + i] = depth[start + p] + 1 if i > 0 else 0
            positions[start + i] = prefix[b] + depth[start + i]
            mask_bits[start + i] = _to_int64_bits(rows[i])
        for i in range(size - 1, 0, -1):
            p = parents_l[start + i]
            next_sibling[start + i] = first_child[start + p]
            first_child[start + p] = i
        leaves = [i for i in range(size) if first_child[start + i] == -1]
        num_leaves[b] = len(leaves)
        for slot, leaf in enumerate(leaves[:max_leaves]):
            path = [i for i in range(size) if (rows[leaf] >> i) & 1]
            leaf_paths[b, slot, : len(path)] = torch.tensor(path, dtype=torch.int32)
    return (
        torch.tensor(mask_bits, dtype=torch.int64),
        torch.tensor(depth, dtype=torch.int32),
        torch.tensor(positions, dtype=torch.int64),
        torch.tensor(first_child, dtype=torch.int32),
        torch.tensor(next_sibling, dtype=torch.int32),
        leaf_paths,
        torch.tensor(num_leaves, dtype=torch.int32),
    )


def kv_compact(
    kv_cache: torch.Tensor,
    accept_local: torch.Tensor,
    accept_len: torch.Tensor,
    prefix_lens: torch.Tensor,
):
    """Reference of ``ops.kv_compact`` (functional: returns a new cache).

    Args:
        kv_cache: [L, 2, B, S_max, Hkv, D]; the tree of request b sits at rows
            ``prefix_lens[b] + local id``.
        accept_local: int32 [B, P], accepted path as local ids, root (0) first, -1 padded.
        accept_len: int32 [B], accepted drafts (the path holds ``accept_len + 1`` nodes).
        prefix_lens: int32 [B].

    Returns:
        (new_cache [L, 2, B, S_max, Hkv, D], seq_lens int32 [B] = prefix + accept_len + 1).
    """
    out = kv_cache.clone()
    for b in range(kv_cache.shape[2]):
        base = int(prefix_lens[b])
        keep = int(accept_len[b]) + 1
        src = [base + int(accept_local[b, i]) for i in range(keep)]
        out[:, :, b, base : base + keep] = kv_cache[:, :, b, src]
    return out, (prefix_lens + accept_len + 1).to(torch.int32)


def verify_greedy(
    candidates: torch.Tensor,
    target_argmax: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    tree_indptr: torch.Tensor,
    max_depth: int,
):
    """Reference of ``ops.verify_greedy``.

    From the root, repeatedly accept the lowest-index child whose token equals the target's
    argmax after the current node; stop when none matches or ``max_depth`` drafts are accepted.

    Args:
        candidates: int64 [N], the token at each node (the root's is ignored).
        target_argmax: int64 [N], the target's greedy token after each node.
        first_child, next_sibling: int32 [N] from ``build_tree``.
        tree_indptr: int32 [B+1].
        max_depth: the most drafts one request can accept.

    Returns:
        accept_local int32 [B, max_depth+1] (root first, -1 padded), accept_len int32 [B]
        (accepted drafts), out_tokens int64 [B, max_depth+1] (accepted drafts then the bonus
        token, -1 padded).
    """
    batch = tree_indptr.numel() - 1
    width = max_depth + 1
    accept_local = torch.full((batch, width), -1, dtype=torch.int32)
    accept_len = torch.zeros(batch, dtype=torch.int32)
    out_tokens = torch.full((batch, width), -1, dtype=torch.int64)
    for b in range(batch):
        start = int(tree_indptr[b])
        node = 0
        accept_local[b, 0] = 0
        n_acc = 0
        while n_acc < max_depth:
            want = int(target_argmax[start + node])
            child = int(first_child[start + node])
            while child != -1 and int(candidates[start + child]) != want:
                child = int(next_sibling[start + child])
            if child == -1:
                break
            out_tokens[b, n_acc] = want
            n_acc += 1
            accept_local[b, n_acc] = child
            node = child
        out_tokens[b, n_acc] = target_argmax[start + node]
        accept_len[b] = n_acc
    return accept_local, accept_len, out_tokens


def tree_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    scale: float,
    mode: int = ATTN_FULL,
):
    """Reference of ``ops.tree_attention``.

    Args:
        q: [N, H, D], the queries of the tree nodes of all requests.
        kv_cache: [L, 2, B, S_max, Hkv, D]; node i of request b has its K/V at row
            ``prefix_lens[b] + i`` of layer ``layer``.
        layer: which layer of the cache to read.
        prefix_lens: int32 [B].
        tree_indptr: int32 [B+1].
        mask_bits: int64 [N], ancestor bit rows from ``build_tree``.
        scale: softmax scale (usually ``D ** -0.5``).
        mode: ATTN_FULL (prefix + tree), ATTN_PREFIX_ONLY or ATTN_TREE_ONLY.

    Returns:
        out [N, H, D] in q's dtype (zeros for a row that sees no key), lse float32 [N, H]
        (natural log of the softmax denominator, -inf for a row that sees no key).
    """
    n, heads, dim = q.shape
    hkv = kv_cache.shape[4]
    group = heads // hkv
    out = torch.zeros(n, heads, dim, dtype=torch.float32)
    lse = torch.full((n, heads), float("-inf"), dtype=torch.float32)
    k_all = kv_cache[layer, 0].float()
    v_all = kv_cache[layer, 1].float()
    for b in range(tree_indptr.numel() - 1):
        start, end = int(tree_indptr[b]), int(tree_indptr[b + 1])
        prefix = int(prefix_lens[b])
        size = end - start
        k = k_all[b, : prefix + size].repeat_interleave(group, dim=1)  # [S, H, D]
        v = v_all[b, : prefix + size].repeat_interleave(group, dim=1)
        for i in range(size):
            bits = int(mask_bits[start + i]) & ((1 << 64) - 1)
            visible = torch.zeros(prefix + size, dtype=torch.bool)
            if mode != ATTN_TREE_ONLY:
                visible[:prefix] = True
            if mode != ATTN_PREFIX_ONLY:
                for j in range(size):
                    visible[prefix + j] = bool((bits >> j) & 1)
            if not visible.any():
                continue
            scores = torch.einsum("hd,shd->hs", q[start + i].float(), k) * scale
            scores = scores.masked_fill(~visible, float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1)
            out[start + i] = torch.einsum("hs,shd->hd", torch.exp(scores - row_lse[:, None]), v)
            lse[start + i] = row_lse
    return out.to(q.dtype), lse


def merge_attn_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
):
    """Reference of ``ops.merge_attn_states``: combine two partial attentions over disjoint keys.

    Args:
        out_a, out_b: [N, H, D]; lse_a, lse_b: float32 [N, H], natural log, -inf when empty.

    Returns:
        out [N, H, D] in out_a's dtype, lse float32 [N, H]. Both empty gives 0 and -inf.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    wa = torch.exp(lse_a - safe).nan_to_num(0.0)[..., None]
    wb = torch.exp(lse_b - safe).nan_to_num(0.0)[..., None]
    # An empty side (weight 0) is ignored whatever its output holds (NaN included).
    part_a = torch.where(wa > 0, wa * out_a.float(), 0.0)
    part_b = torch.where(wb > 0, wb * out_b.float(), 0.0)
    return (part_a + part_b).to(out_a.dtype), lse


# verify_sampling


def sample_inverse_cdf(weights: torch.Tensor, u: float) -> int | None:
    """Index v drawn with probability ``weights[v] / weights.sum()`` using the uniform u in [0, 1).

    The first index whose float64 cumulative weight exceeds ``u * total`` (index order); the last
    index of positive weight if round-off leaves none; None when the total weight is 0.

    Args:
        weights: float32 [V], non-negative, not necessarily normalised.
        u: a uniform in [0, 1).
    """
    cdf = torch.cumsum(weights.double(), 0)
    total = float(cdf[-1])
    if not total > 0.0:
        return None
    threshold = torch.tensor([u * total], dtype=torch.float64)
    index = int(torch.searchsorted(cdf, threshold, right=True))
    if index >= weights.numel():
        index = int(torch.nonzero(weights > 0).max())
    return index


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def verify_sampling(
    candidates: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    tree_indptr: torch.Tensor,
    uniforms: torch.Tensor,
    mode: int,
    max_depth: int,
):
    """Reference of ``ops.verify_sampling`` (same uniforms, same decisions, same tokens).

    At each node the current target distribution is ``p = r * inv`` (float32): r starts as the
    node's target row with inv = 1. For each child x (sibling order, coin ``uniforms[node]``):
      - chain / tree_recursive: accept iff ``u * q(x) < p(x)`` (exact in float64); on rejection
        ``r = max(p - q, 0)`` and ``inv = float32(1 / sum(r))``, unless sum(r) == 0 (round-off
        only), which keeps p.
      - topk: ``mass`` = float64 sum of the target row minus the removed tokens' probabilities;
        accept iff ``u * mass < p(x)``; on rejection remove x (``mass -= p(x)``); a token already
        removed is skipped.
    Drafts stop at ``max_depth``. The final token (coin ``uniforms[N + b]``) is
    ``sample_inverse_cdf`` of r (topk: the target row with the removed tokens zeroed, or the whole
    row if that leaves no mass).

    Args:
        candidates: int64 [N]; target_probs: float32 [N, V]; draft_probs: float32 [N, V] or None
        (topk); first_child, next_sibling: int32 [N]; tree_indptr: int32 [B+1];
        uniforms: float32 [N + B]; mode: VERIFY_CHAIN, VERIFY_TREE_RECURSIVE or VERIFY_TOPK;
        max_depth: the most drafts one request may accept.

    Returns:
        accept_local int32 [B, max_depth+1], accept_len int32 [B], out_tokens int64
        [B, max_depth+1], as ``ops.verify_sampling``.
    """
    n = candidates.numel()
    batch = tree_indptr.numel() - 1
    width = max_depth + 1
    coins = uniforms.tolist()
    tokens_l = candidates.tolist()
    child_of = first_child.tolist()
    sibling_of = next_sibling.tolist()
    accept_local = torch.full((batch, width), -1, dtype=torch.int32)
    accept_len = torch.zeros(batch, dtype=torch.int32)
    out_tokens = torch.full((batch, width), -1, dtype=torch.int64)
    for b in range(batch):
        start = int(tree_indptr[b])
        node, n_acc = 0, 0
        accept_local[b, 0] = 0
        while True:
            r, inv, removed = target_probs[start + node], _f32(1.0), []
            if n_acc == max_depth:
                break
            child, accepted, mass = child_of[start + node], -1, None
            while child != -1:
                x, u = tokens_l[start + child], coins[start + child]
                if mode == VERIFY_TOPK:
                    if mass is None:
                        mass = float(r.double().sum())
                    if x not in removed:
                        px = float(r[x])
                        if u * mass < px:
                            accepted = child
                            break
                        removed.append(x)
                        mass -= px
                else:
                    q = draft_probs[start + child]
                    p = r * inv
                    if u * float(q[x]) < float(p[x]):
                        accepted = child
                        break
                    residual = torch.clamp(p - q, min=0.0)
                    s = float(residual.double().sum())
                    if s > 0.0:
                        r, inv = residual, _f32(1.0 / s)
                child = sibling_of[start + child]
            if accepted == -1:
                break
            out_tokens[b, n_acc] = tokens_l[start + accepted]
            n_acc += 1
            accept_local[b, n_acc] = accepted
            node = accepted
        u = coins[n + b]
        weights = r.clone()
        if removed:
            weights[removed] = 0.0
        token = sample_inverse_cdf(weights, u)
        if token is None:
            token = sample_inverse_cdf(r, u)
        if token is None:
            raise ValueError(f"verify_sampling: request {b}: nothing to sample at node {node}")
        out_tokens[b, n_acc] = token
        accept_len[b] = n_acc
    return accept_local, accept_len, out_tokens



# ldlp_mlp


def ldlp_mlp(
    emb: torch.Tensor,
    hidden: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor,
    w_blocks: torch.Tensor,
    b_blocks: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    k_max: int,
    eps: float,
):
    """Reference of ``ops.ldlp_mlp``: the LDLP draft-length predictor, all in fp32.

    Args:
        emb, hidden: [B, H]; the embedding of the last accepted token and the target's
            final-normed hidden state there.
        w_in [W, 2H], b_in [W], w_blocks [3, W, W], b_blocks [3, W], w_out [1, W], b_out [1]:
            PyTorch Linear layout (out x in).
        k_max: largest length returned; eps: added to the mean square in the RMS norms.

    Returns:
        lengths int32 [B] = clamp(round(raw), 0, k_max) with round half to even (NaN -> 0),
        raw float32 [B], max_len int32 [1] (0 for an empty batch).
    """

    def rms_norm(v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        return v * torch.rsqrt(v.pow(2).mean(dim=-1, keepdim=True) + eps)

    x = torch.cat([rms_norm(emb), rms_norm(hidden)], dim=-1) @ w_in.float().T + b_in.float()
    for layer in range(w_blocks.shape[0]):
        x = x + torch.nn.functional.silu(x @ w_blocks[layer].float().T + b_blocks[layer].float())
    raw = (x @ w_out.float().T + b_out.float()).squeeze(-1)
    lengths = torch.round(raw).nan_to_num(0.0).clamp(0, k_max).to(torch.int32)
    max_len = lengths.amax().reshape(1) if lengths.numel() else lengths.new_zeros(1)
    return lengths, raw, max_len


# linear

GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 3, 8, 30

# ggml type -> (weights per block, bytes per block), as in gguf.GGML_QUANT_SIZES.
GGML_BLOCKS = {
    GGML_F32: (1, 4),
    GGML_F16: (1, 2),
    GGML_Q4_0: (32, 18),
    GGML_Q4_1: (32, 20),
    GGML_Q8_0: (32, 34),
    GGML_BF16: (1, 2),
}


def _fp16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian fp16 at byte `offset` of every block, as float32 [..., 1]."""
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 payload bytes -> 32 values: byte j's low nibble is value j, its high one j + 16."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1).to(torch.int32)


def dequantize(data: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """Packed GGUF rows -> float32 weights, bit-identical to ``gguf.quants.dequantize``.

    Args:
        data: uint8 [N, row_bytes], each row K weights in ggml blocks (F32, F16, BF16, Q4_0,
            Q4_1 or Q8_0; see ``csrc/include/adaeagle/gguf_blocks.h`` for the layouts).
        ggml_type: the ggml type number.

    Returns:
        float32 [N, K].
    """
    if ggml_type not in GGML_BLOCKS:
        raise ValueError(f"unsupported ggml type {ggml_type}")
    block, nbytes = GGML_BLOCKS[ggml_type]
    rows = data.shape[0]
    data = data.contiguous()
    if ggml_type == GGML_F32:
        return data.view(torch.float32).clone()
    if ggml_type == GGML_F16:
        return data.view(torch.float16).float()
    if ggml_type == GGML_BF16:
        return data.view(torch.bfloat16).float()
    nblocks = data.shape[1] // nbytes  # explicit: -1 is ambiguous when N = 0
    blocks = data.view(rows, nblocks, nbytes)
    d = _fp16_field(blocks, 0)
    if ggml_type == GGML_Q8_0:
        w = blocks[..., 2:].contiguous().view(torch.int8).float() * d
    elif ggml_type == GGML_Q4_0:
        w = (_nibbles(blocks[..., 2:]) - 8).float() * d
    else:  # Q4_1: d * q rounded, then + m rounded
        w = d * _nibbles(blocks[..., 4:]).float() + _fp16_field(blocks, 2)
    return w.reshape(rows, nblocks * block)


def linear(
    x: torch.Tensor, weight: torch.Tensor, ggml_type: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of ``ops.linear``: dequantise, then an fp32 matmul.

    Args:
        x: [M, K] float32 or bfloat16.
        weight: uint8 [N, row_bytes], packed GGUF rows of ``ggml_type``.
        bias: optional float32 [N].

    Returns:
        float32 [M, N] = x @ dequantize(weight).T + bias.
    """
    y = x.float() @ dequantize(weight, ggml_type).T
    return y if bias is None else y + bias.float()


def quantize_act_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of x quantised per block of 32 values, as ``ops.linear(act_quant=8)`` does
    (llama.cpp's q8_1 reference, with the scale kept in fp32 and half-to-even rounding).

    Per block: ``d = amax / 127``, ``q = round(x * (1 / d))`` (0 when ``amax == 0``),
    ``s = d * sum(q)``; a block holding a NaN or an infinity gets ``d = s = NaN``, ``q = 0``.

    Args:
        x: [M, K] float32 or bfloat16, K a multiple of 32.

    Returns:
        q int8 [M, K / 32, 32], d float32 [M, K / 32], s float32 [M, K / 32].
    """
    m, k = x.shape
    xb = x.float().reshape(m, k // 32, 32)
    finite = torch.isfinite(xb).all(dim=-1)
    amax = xb.abs().nan_to_num(0.0, 0.0, 0.0).amax(dim=-1)
    d = amax / 127.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, 1.0), 0.0)
    q = torch.round(xb.nan_to_num(0.0, 0.0, 0.0) * inv[..., None])
    q = torch.where(finite[..., None], q, 0.0).to(torch.int8)
    nan = torch.tensor(float("nan"))
    d = torch.where(finite, d, nan)
    s = torch.where(finite, d * q.sum(dim=-1, dtype=torch.int32).float(), nan)
    return q, d, s


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fp32 fused multiply-add ``a * b + c`` rounded once (a, b, c float32).

    a * b is exact in float64; the float64 sum is made round-to-odd (TwoSum's error term nudges
    an inexact even result one ulp towards the exact value), and rounding that to fp32 is the
    correctly rounded fp32 result (Boldo and Melquiond, 53 >= 24 + 2).
    """
    p, c = a.double() * b.double(), c.double()
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(torch.int64) & 1) == 0
    nudge = (err != 0) & even & torch.isfinite(s)
    toward = torch.where(err > 0, torch.inf, -torch.inf).to(torch.float64)
    s = torch.where(nudge, torch.nextafter(s, toward), s)
    return s.float()


def linear_q8(
    x: torch.Tensor, weight: torch.Tensor, ggml_type: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of ``ops.linear(..., act_quant=8)`` (see ``csrc/cpu/linear_q8.h``).

    x is quantised per row and block (``quantize_act_q8``); each block's dot product with the
    integer weights is exact; block b adds, in increasing b, from acc = 0 (fp32, fused):
    Q8_0 ``fma(dw * d, sum w q)``, Q4_0 ``fma(dw * d, sum (u - 8) q)``,
    Q4_1 ``fma(mw, s, fma(dw * d, sum u q))``; then ``+ bias``.

    Args:
        x: [M, K] float32 or bfloat16.
        weight: uint8 [N, row_bytes], packed rows of Q4_0, Q4_1 or Q8_0.
        bias: optional float32 [N].

    Returns:
        float32 [M, N].
    """
    if ggml_type not in (GGML_Q4_0, GGML_Q4_1, GGML_Q8_0):
        raise ValueError(f"act_quant needs Q4_0, Q4_1 or Q8_0 weights, got type {ggml_type}")
    nbytes = GGML_BLOCKS[ggml_type][1]
    n = weight.shape[0]
    blocks = weight.contiguous().view(n, -1, nbytes)
    dw = _fp16_field(blocks, 0)[..., 0]  # [N, B]
    if ggml_type == GGML_Q8_0:
        wq = blocks[..., 2:].contiguous().view(torch.int8).to(torch.int64)
    elif ggml_type == GGML_Q4_0:
        wq = _nibbles(blocks[..., 2:]).to(torch.int64) - 8
    else:
        wq = _nibbles(blocks[..., 4:]).to(torch.int64)
    q, d, s = quantize_act_q8(x)
    dots = torch.einsum("mbj,nbj->mnb", q.to(torch.int64), wq).float()  # exact: |dot| < 2^24
    acc = torch.zeros(x.shape[0], n)
    for b in range(q.shape[1]):
        scale = dw[None, :, b] * d[:, None, b]
        acc = _fma_f32(scale, dots[..., b], acc)
        if ggml_type == GGML_Q4_1:
            acc = _fma_f32(_fp16_field(blocks, 2)[None, :, b, 0], s[:, None, b], acc)
    return acc if bias is None else acc + bias.float()


# rms_norm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Llama's RMSNorm: x [..., H], weight [H] of x's dtype -> [..., H] of x's dtype.
    The mean square and the scaling in fp32, rounded to x's dtype, then times weight in x's
    dtype (torch's summation order: equal to ``ops.rms_norm`` up to fp32 rounding)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


# rope_store_kv


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """cat(-x[..., D/2:], x[..., :D/2]) of x [..., D]."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_store_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  kv_cache: torch.Tensor, layer: int, req: torch.Tensor, rows: torch.Tensor,
                  num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """RoPE of q and k and the cache write in PyTorch ops (the model's code before the op).

    qkv [N, (H + 2 Hkv) D]; cos, sin [N, D] or [N, 1, D]; kv_cache [L, 2, B, S_max, Hkv, D],
    written at ``[layer, 0 / 1, req[i], rows[i]]`` with the roped k / the v of token i; req, rows
    int64 [N]. All of one dtype, each op rounding to it. Returns the roped q [N, H, D].
    """
    n, h, kv = qkv.shape[0], num_heads, num_kv_heads
    d = kv_cache.shape[-1]
    cos, sin = cos.reshape(n, 1, d), sin.reshape(n, 1, d)
    qk = qkv[:, :(h + kv) * d].view(n, h + kv, d)
    qk = qk * cos + rotate_half(qk) * sin
    q, k, v = qk[:, :h], qk[:, h:], qkv[:, (h + kv) * d:].view(n, kv, d)
    kv_cache[layer, 0, req, rows] = k
    kv_cache[layer, 1, req, rows] = v
    return q


# decoder_layers and eagle_head_layer


def _packed_linears(weights, ggml_types, act_quants, dtype):
    """lin(t, i, bias=None): ``t`` through packed weight i, in ``dtype`` (act_quant 8 applies to
    the quantised types only, as in ``ops.linear``)."""

    def lin(t, i, bias=None):
        quantised = ggml_types[i] in (GGML_Q4_0, GGML_Q4_1, GGML_Q8_0)
        fn = linear_q8 if act_quants[i] == 8 and quantised else linear
        return fn(t, weights[i], ggml_types[i], bias).to(dtype)

    return lin


def decoder_layers(x, norms, weights, ggml_types, act_quants, qkv_biases, cos, sin, kv_cache,
                   req, rows, prefix_lens, tree_indptr, mask_bits, num_heads: int,
                   num_kv_heads: int, eps: float, scale: float) -> torch.Tensor:
    """Reference of ``ops.decoder_layers`` (same arguments): returns the new x (x itself is not
    changed) and writes each layer's k / v to ``kv_cache``, in reference ops throughout."""
    n, dtype = x.shape[0], x.dtype
    lin = _packed_linears(weights, ggml_types, act_quants, dtype)
    for layer in range(len(norms) // 2):
        w = 4 * layer
        qkv = lin(rms_norm(x, norms[2 * layer], eps), w, qkv_biases[layer])
        q = rope_store_kv(qkv, cos, sin, kv_cache, layer, req, rows, num_heads, num_kv_heads)
        attn, _ = tree_attention(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale)
        x = x + lin(attn.reshape(n, -1), w + 1)
        gate, up = lin(rms_norm(x, norms[2 * layer + 1], eps), w + 2).chunk(2, dim=-1)
        x = x + lin(torch.nn.functional.silu(gate) * up, w + 3)
    return x


def eagle_head_layer(tokens, features, embed, weights, ggml_types, act_quants, biases, norm,
                     cos, sin, kv_cache, req, rows, prefix_lens, tree_indptr, mask_bits,
                     new_index, num_heads: int, num_kv_heads: int, eps: float,
                     scale: float) -> torch.Tensor:
    """Reference of ``ops.eagle_head_layer`` (same arguments but ``out``): returns the new
    nodes' features [M, hidden] and writes their k / v to ``kv_cache``, in reference ops."""
    m, dtype = tokens.shape[0], embed.dtype
    lin = _packed_linears(weights, ggml_types, act_quants, dtype)
    x = lin(torch.cat([embed[tokens], features], dim=-1), 0, biases[0])
    q = rope_store_kv(lin(x, 1, biases[1]), cos, sin, kv_cache, 0, req, rows, num_heads,
                      num_kv_heads)
    if new_index is not None:
        q = q.new_zeros(mask_bits.shape[0], *q.shape[1:]).index_copy(0, new_index, q)
    attn, _ = tree_attention(q, kv_cache, 0, prefix_lens, tree_indptr, mask_bits, scale)
    if new_index is not None:
        attn = attn[new_index]
    x = x + lin(attn.reshape(m, -1), 2, biases[2])
    gate, up = lin(rms_norm(x, norm, eps), 3).chunk(2, dim=-1)
    return x + lin(torch.nn.functional.silu(gate) * up, 4)


# aded_draft


def trigram_rows(sequences, top_k: int = 12) -> dict[tuple[int, int], list[tuple[int, float]]]:
    """Reference of tri-gram counting (``drafters.trigram.count_trigrams``).

    Args:
        sequences: token-id lists, each a separate document (no tri-gram spans two).
        top_k: successors kept per row.

    Returns:
        {(t1, t2): [(t3, count / row total), ...]}, the ``top_k`` most frequent successors by
        count descending then id ascending; the probability is over the whole row.
    """
    counts: dict[tuple[int, int], dict[int, int]] = {}
    for seq in sequences:
        seq = [int(t) for t in seq]
        for t1, t2, t3 in zip(seq, seq[1:], seq[2:], strict=False):
            row = counts.setdefault((t1, t2), {})
            row[t3] = row.get(t3, 0) + 1
    rows = {}
    for key, row in sorted(counts.items()):
        total = sum(row.values())
        ranked = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        rows[key] = [(t3, c / total) for t3, c in ranked]
    return rows


def aded_reinforce(overlay: dict, stored_prob, tokens, window: int = 16, boost: float = 0.04,
                   cap: float = 3.0) -> None:
    """Reference of ADED's online update, in place: every tri-gram occurrence among the last
    ``window`` tokens adds ``boost`` to its value, capped at ``cap``; an entry starts from its
    stored probability (``stored_prob(t1, t2, t3)``, 0 when absent). No renormalisation.

    ``overlay`` is {(t1, t2): {t3: value}}; the stored table is never touched.
    """
    tail = [int(t) for t in tokens][-window:]
    for t1, t2, t3 in zip(tail, tail[1:], tail[2:], strict=False):
        row = overlay.setdefault((t1, t2), {})
        row[t3] = min(row.get(t3, stored_prob(t1, t2, t3)) + boost, cap)


class AdedRows:
    """Row lookup over a stored CSR table and an overlay (the layouts ``ops.aded_draft``
    takes): a row is the stored successors with the overlay's values replacing or adding
    entries, sorted by value descending then token ascending."""

    def __init__(self, table, online):
        self.stored = [t.numpy() for t in table]
        self.extra = [t.numpy() for t in online]
        self.stored_keys = self.stored[0].tolist()
        self.extra_keys = self.extra[0].tolist()

    @staticmethod
    def _lookup(keys, csr, key) -> list[tuple[int, float]]:
        k = bisect.bisect_left(keys, key)
        if k == len(keys) or keys[k] != key:
            return []
        lo, hi = int(csr[1][k]), int(csr[1][k + 1])
        return list(zip(csr[2][lo:hi].tolist(), csr[3][lo:hi].tolist(), strict=True))

    def row(self, t1: int, t2: int) -> list[tuple[int, float]]:
        key = (t1 << 32) | t2
        merged = dict(self._lookup(self.stored_keys, self.stored, key))
        merged.update(self._lookup(self.extra_keys, self.extra, key))
        return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))


class _SplitMix64:
    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = seed & self.MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53


def aded_paths_to_tree(paths, root_token: int, max_nodes: int = MAX_TREE_NODES):
    """Reference of ``ops.aded_paths_to_tree`` on a list of token lists (best first).

    Returns:
        (parents list, tokens list) of the used nodes, in creation (topological) order.
    """
    parents, tokens = [-1], [int(root_token)]
    for path in paths:
        cur = 0
        for tok in path:
            child = next((i for i in range(1, len(parents))
                          if parents[i] == cur and tokens[i] == tok), None)
            if child is None:
                if len(parents) >= max_nodes:
                    break
                parents.append(cur)
                tokens.append(int(tok))
                child = len(parents) - 1
            cur = child
    return parents, tokens


def aded_draft(table, online, context, *, iterations: int = 150, max_len: int = 4,
               top_paths: int = 24, max_nodes: int = MAX_TREE_NODES, c1: float = 32.0,
               c2: float = 8.0, fallback_token: int = 100, seed: int = 0):
    """Reference of ``ops.aded_draft``: the same MCTS, RNG and arithmetic, in plain Python.

    Args: as ``ops.aded_draft`` (table and online are CSR tensor 4-tuples).

    Returns:
        (parents int32 [max_nodes], tokens int64 [max_nodes], num_nodes int32 [1]), -1 padded.
    """
    return aded_search(AdedRows(table, online), context, iterations=iterations,
                       max_len=max_len, top_paths=top_paths, max_nodes=max_nodes, c1=c1, c2=c2,
                       fallback_token=fallback_token, seed=seed)


def aded_search(rows: AdedRows, context, *, iterations: int = 150, max_len: int = 4,
                top_paths: int = 24, max_nodes: int = MAX_TREE_NODES, c1: float = 32.0,
                c2: float = 8.0, fallback_token: int = 100, seed: int = 0):
    """The search of ``aded_draft`` over prepared rows (see there)."""
    row_of = rows.row
    context = [int(t) for t in context]
    root = context[-1]
    max_depth = max_len - 1
    paths: list[list[int]] = []
    if len(context) >= 2 and max_depth >= 1:
        # node: [token, prev_token, parent, children, depth, visits, value_sum, prior, expanded]
        nodes = [[root, context[-2], -1, [], 0, 0, 0.0, 0.0, False]]
        rng = _SplitMix64(seed)
        for _ in range(iterations):
            node, path = 0, [0]
            while nodes[node][3]:
                parent = nodes[node]
                explore = (c1 + math.log((parent[5] + c2 + 1.0) / c2)) * math.sqrt(parent[5])
                best, best_score = None, -math.inf
                for c in parent[3]:
                    n = nodes[c][5]
                    if n == 0:
                        best = c
                        break
                    score = nodes[c][6] / n + explore * nodes[c][7] / (1.0 + n)
                    if score > best_score:
                        best, best_score = c, score
                node = best
                path.append(node)
            tok, prev, _, _, depth, _, _, _, expanded = nodes[node]
            if not expanded and depth < max_depth:
                nodes[node][8] = True
                for succ, value in row_of(prev, tok):
                    nodes.append([succ, tok, node, [], depth + 1, 0, 0.0, value, False])
                    nodes[node][3].append(len(nodes) - 1)
                if nodes[node][3]:
                    node = nodes[node][3][-1]
                    path.append(node)
            reward, prev, cur = 1.0, nodes[node][1], nodes[node][0]
            for _ in range(nodes[node][4], max_depth):
                row = row_of(prev, cur)
                if not row:
                    break
                total = 0.0
                for _, value in row:
                    total += value
                u = rng.uniform() * total
                cum, pick = 0.0, len(row) - 1
                for i, (_, value) in enumerate(row):
                    cum += value
                    if u < cum:
                        pick = i
                        break
                reward += row[pick][1]
                prev, cur = cur, row[pick][0]
            for p in path:
                nodes[p][5] += 1
                nodes[p][6] += reward
        ranked = sorted(range(1, len(nodes)), key=lambda i: (-nodes[i][5], i))[:top_paths]
        for i in ranked:
            toks, n = [], i
            while n > 0:
                toks.append(nodes[n][0])
                n = nodes[n][2]
            toks.reverse()
            row = row_of(nodes[i][1], nodes[i][0])
            if row:
                toks.append(row[0][0])
            paths.append(toks)
    if not paths:
        paths = [[int(fallback_token)]]
    parents, tokens = aded_paths_to_tree(paths, root, max_nodes)
    pad = max_nodes - len(parents)
    return (torch.tensor(parents + [-1] * pad, dtype=torch.int32),
            torch.tensor(tokens + [-1] * pad, dtype=torch.int64),
            torch.tensor([len(parents)], dtype=torch.int32))
