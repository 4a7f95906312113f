"""One documented wrapper per adaeagle op, plus its fake (meta) implementation.

Every op under ``torch.ops.adaeagle`` writes caller-provided outputs and returns nothing (the hot
path: no allocation, no host sync). The wrappers here allocate those outputs unless ``out=`` is
given, and return them. Output shapes come from the arguments, never from data, so the fake
implementations need no data and the ops work under ``torch.compile``.

Conventions: index tensors int32; token ids int64; probabilities float32. A draft tree of request
b is a parents array in topological order (local node 0 is the root with parent -1, and
``0 <= parents[i] < i``); a ragged batch concatenates them with CSR offsets ``tree_indptr [B+1]``.
Trees hold at most 64 nodes, so an ancestor set is one int64 bit row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from adaeagle_ext import ref as _ref
from adaeagle_ext._build import extension_available, require_extension

MAX_TREE_NODES = 64


def _op(name: str):
    require_extension()
    return getattr(torch.ops.adaeagle, name)


# ---------------------------------------------------------------------------------------------
# build_tree


class TreeArrays(NamedTuple):
    """Outputs of ``build_tree`` (N nodes, B requests)."""

    mask_bits: torch.Tensor  # int64 [N]: bit j set when local j is the node or an ancestor
    depth: torch.Tensor  # int32 [N]: root 0
    positions: torch.Tensor  # int64 [N]: prefix_len + depth
    first_child: torch.Tensor  # int32 [N]: local id, -1 for none
    next_sibling: torch.Tensor  # int32 [N]: local id, -1 for none
    leaf_paths: torch.Tensor  # int32 [B, max_leaves, max_depth+1]: root-to-leaf, -1 padded
    num_leaves: torch.Tensor  # int32 [B]


def build_tree(
    parents: torch.Tensor,
    tree_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    max_depth: int,
    max_leaves: int,
    *,
    out: TreeArrays | None = None,
    validate: bool = False,
) -> TreeArrays:
    """Ancestor bit rows, depths, positions, child/sibling links and leaf paths of draft trees.

    Args:
        parents: int32 [N], local parent of each node (-1 for the root, else ``< `` the node).
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        prefix_lens: int32 [B], committed tokens before each root.
        max_depth: deepest depth allowed (root 0), at most 63; sets the path width.
        max_leaves: most leaves a request may have, 1 to 64.
        out: optional preallocated outputs (the hot path).
        validate: on CUDA, check the trees on the host first (one sync). The CPU kernel always
            checks: a tree over 64 nodes, a root whose parent is not -1, a parent that is not
            earlier than its child, a depth over ``max_depth`` or more than ``max_leaves`` leaves
            raise a RuntimeError naming the request and node.

    Returns:
        TreeArrays; siblings are linked in ascending index order and leaves are in index order.
    """
    if out is None:
        n, batch = parents.numel(), tree_indptr.numel() - 1
        dev = parents.device
        i32, i64 = dict(dtype=torch.int32, device=dev), dict(dtype=torch.int64, device=dev)
        out = TreeArrays(
            torch.empty(n, **i64),
            torch.empty(n, **i32),
            torch.empty(n, **i64),
            torch.empty(n, **i32),
            torch.empty(n, **i32),
            torch.empty(max(batch, 0), max_leaves, max_depth + 1, **i32),
            torch.empty(max(batch, 0), **i32),
        )
    if validate and parents.device.type != "cpu":
        build_tree(parents.cpu(), tree_indptr.cpu(), prefix_lens.cpu(), max_depth, max_leaves)
    _op("build_tree")(parents, tree_indptr, prefix_lens, max_depth, max_leaves, *out)
    return out


# ---------------------------------------------------------------------------------------------
# kv_compact


def kv_compact(
    kv_cache: torch.Tensor,
    accept_local: torch.Tensor,
    accept_len: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Move each request's accepted K/V rows into consecutive slots, all layers in one call.

    For request b and every layer and k/v, path node i (``1 <= i <= accept_len[b]``) moves from
    row ``prefix_lens[b] + accept_local[b, i]`` to row ``prefix_lens[b] + i``, in place. Moves
    with source == destination (an accepted chain) cost nothing, and no other row is touched:
    rows past the new length keep their (stale) contents.

    Args:
        kv_cache: float32/bfloat16/float16 [L, 2, B, S_max, Hkv, D], mutated in place. Any
            strides for the first four dims (e.g. a slice of a larger buffer) as long as each
            [Hkv, D] row is contiguous.
        accept_local: int32 [B, P] (P = max_depth + 1, at most 64): the accepted path in local
            ids, root 0 first, strictly increasing, -1 padded (``verify_greedy``'s output).
        accept_len: int32 [B], accepted drafts, in [0, P - 1].
        prefix_lens: int32 [B], committed tokens before each root.
        out: optional preallocated int32 [B] for the new lengths (the hot path); it must not
            share memory with the index inputs.
        validate: on CUDA, check the paths on the host first (one sync). The CPU kernel always
            checks, before moving anything: ``accept_len`` out of range, a path that does not
            start at 0 or is not strictly increasing, a negative prefix, or a row at or past
            S_max raise a RuntimeError naming the request. Unvalidated bad requests on CUDA move
            nothing.

    Returns:
        seq_lens int32 [B] = ``prefix_lens + accept_len + 1``.
    """
    if out is None:
        out = torch.empty(prefix_lens.shape, dtype=torch.int32, device=prefix_lens.device)
    if validate and kv_cache.device.type != "cpu" and kv_cache.dim() == 6:
        rows_only = torch.empty((1, 2, *kv_cache.shape[2:4], 1, 1), dtype=torch.float16)
        kv_compact(rows_only, accept_local.cpu(), accept_len.cpu(), prefix_lens.cpu())
    _op("kv_compact")(kv_cache, accept_local, accept_len, prefix_lens, out)
    return out


# ---------------------------------------------------------------------------------------------
# verify_greedy


class Acceptance(NamedTuple):
    """Outputs of a verification (B requests, P = max_depth + 1)."""

    accept_local: torch.Tensor  # int32 [B, P]: accepted path in local ids, root first, -1 padded
    accept_len: torch.Tensor  # int32 [B]: accepted drafts (the path holds accept_len + 1 nodes)
    out_tokens: torch.Tensor  # int64 [B, P]: accepted drafts then the bonus token, -1 padded


def verify_greedy(
    candidates: torch.Tensor,
    target_argmax: torch.Tensor,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    tree_indptr: torch.Tensor,
    max_depth: int,
    *,
    out: Acceptance | None = None,
    validate: bool = False,
) -> Acceptance:
    """Greedy verification of draft trees: the longest path the target agrees with.

    From the root, repeatedly accept the lowest-index child whose token equals the target's
    argmax after the current node; stop when none matches or ``max_depth`` drafts are accepted.
    The emitted tokens are the accepted drafts followed by the bonus token (the target's argmax
    after the last accepted node).

    Args:
        candidates: int64 [N], the token at each node (the root's entry is ignored).
        target_argmax: int64 [N], the target's greedy token after each node.
        first_child, next_sibling: int32 [N], local ids from ``build_tree`` (-1 for none).
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        max_depth: the most drafts one request can accept, 0 to 63; sets P = max_depth + 1.
        out: optional preallocated outputs (the hot path) with P columns.
        validate: on CUDA, check the trees on the host first (one sync). The CPU kernel always
            checks: an empty tree, a bad ``tree_indptr``, or a visited link that is out of range
            or not strictly forward (which would loop) raise a RuntimeError naming the request
            and node. Unvalidated bad trees on CUDA give well-formed but meaningless outputs.

    Returns:
        Acceptance(accept_local int32 [B, P], accept_len int32 [B], out_tokens int64 [B, P]).
    """
    if out is None:
        batch, dev = max(tree_indptr.numel() - 1, 0), candidates.device
        out = Acceptance(
            torch.empty(batch, max_depth + 1, dtype=torch.int32, device=dev),
            torch.empty(batch, dtype=torch.int32, device=dev),
            torch.empty(batch, max_depth + 1, dtype=torch.int64, device=dev),
        )
    elif out.accept_local.dim() != 2 or out.accept_local.shape[1] != max_depth + 1:
        raise ValueError(f"verify_greedy: out.accept_local must have max_depth + 1 = "
                         f"{max_depth + 1} columns, got shape {tuple(out.accept_local.shape)}")
    if validate and candidates.device.type != "cpu":
        verify_greedy(candidates.cpu(), target_argmax.cpu(), first_child.cpu(),
                      next_sibling.cpu(), tree_indptr.cpu(), max_depth)
    _op("verify_greedy")(candidates, target_argmax, first_child, next_sibling, tree_indptr, *out)
    return out


# ---------------------------------------------------------------------------------------------
# tree_attention and merge_attn_states

ATTN_FULL = _ref.ATTN_FULL  # prefix + tree
ATTN_PREFIX_ONLY = _ref.ATTN_PREFIX_ONLY  # cached prefix only
ATTN_TREE_ONLY = _ref.ATTN_TREE_ONLY  # tree part only, masked by the bit rows


def tree_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    scale: float | None = None,
    mode: int = ATTN_FULL,
    *,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    validate: bool = False,
    use_flash_attn: bool | None = None,
):
    """Attention of the tree tokens of a ragged batch over their cached prefix and tree ancestors.

    Node i of request b attends to cache rows ``[0, prefix_lens[b])`` (the prefix) and to row
    ``prefix_lens[b] + j`` for every local node j whose bit is set in ``mask_bits[i]`` (itself
    and its ancestors); a chain is the causal special case. The tree's K/V must already be in
    the cache at rows ``prefix_lens[b] + local id``.

    Args:
        q: [N, H, D] float32 / bfloat16 (/ float16), D 64 or 128, H a multiple of Hkv.
        kv_cache: [L, 2, B_cache, S_max, Hkv, D], q's dtype; request b uses slot b (B <= B_cache).
        layer: the layer of the cache to read.
        prefix_lens: int32 [B], cached rows before each root.
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``, at most 64.
        mask_bits: int64 [N], ancestor bit rows from ``build_tree``.
        scale: softmax scale, default ``D ** -0.5``.
        mode: ATTN_FULL, ATTN_PREFIX_ONLY or ATTN_TREE_ONLY.
        return_lse: also return the log-sum-exp.
        out: optional [N, H, D] output in q's dtype; lse: optional float32 [N, H] (implies
            return_lse).
        validate: on CUDA, check ``prefix_lens + T <= S_max`` and ``T <= 64`` on the host first
            (one sync); the CUDA kernel writes NaN for such requests. The CPU kernel always
            checks and raises.
        use_flash_attn: CUDA, ATTN_FULL, fp16/bf16 only: compute the prefix part with
            ``flash_attn.flash_attn_with_kvcache`` and merge it with a tree-only pass. None
            (default) uses it when flash_attn is importable; False never does.

    Returns:
        out [N, H, D] (zeros for a row that sees no key), or (out, lse) with lse float32 [N, H]
        the natural-log softmax denominator (-inf for a row that sees no key).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    want_lse = return_lse or lse is not None
    if out is None:
        out = torch.empty_like(q)
    if lse is None and want_lse:
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    if validate and q.device.type != "cpu":
        _validate_tree_batch(q.shape[0], kv_cache.shape[3], prefix_lens, tree_indptr)
    if _flash_attn_applies(use_flash_attn, q, mode):
        if lse is None:
            lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
        _tree_attention_flash(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale,
                              out, lse)
    else:
        _op("tree_attention")(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits,
                              float(scale), int(mode), out, lse)
    return (out, lse) if want_lse else out


def merge_attn_states(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
):
    """Combine two partial attentions over disjoint key sets by their log-sum-exp.

    ``out = wa * out_a + wb * out_b`` with ``wa = exp(lse_a - lse)``, ``wb = exp(lse_b - lse)``
    and ``lse = logaddexp(lse_a, lse_b)``. A side with LSE -inf (no key) is ignored, whatever
    its output holds: one empty side copies the other, both empty give 0 and -inf.

    Args:
        out_a, out_b: [N, H, D] float32 / bfloat16 / float16, one dtype.
        lse_a, lse_b: float32 [N, H], natural log (flash-attn's [B, H, S] must be permuted).
        out: optional [N, H, D] output; may be ``out_a`` or ``out_b`` itself (in place).
        lse: optional float32 [N, H] output; may be ``lse_a`` or ``lse_b`` itself.

    Returns:
        (out, lse).
    """
    if out is None:
        out = torch.empty_like(out_a)
    if lse is None:
        lse = torch.empty_like(lse_a)
    _op("merge_attn_states")(out_a, lse_a, out_b, lse_b, out, lse)
    return out, lse


def _validate_tree_batch(num_nodes: int, s_max: int, prefix_lens: torch.Tensor,
                         tree_indptr: torch.Tensor) -> None:
    """Host-side version of the CPU kernel's data checks (one sync), for CUDA inputs."""
    indptr = tree_indptr.cpu().tolist()
    prefix = prefix_lens.cpu().tolist()
    if indptr[0] != 0 or indptr[-1] != num_nodes:
        raise RuntimeError(f"tree_attention: tree_indptr must run from 0 to q.size(0)="
                           f"{num_nodes}, got {indptr[0]} .. {indptr[-1]}")
    for b, plen in enumerate(prefix):
        size = indptr[b + 1] - indptr[b]
        if not 0 <= size <= MAX_TREE_NODES:
            raise RuntimeError(f"tree_attention: request {b} has {size} tree tokens, expected "
                               f"0 to {MAX_TREE_NODES}")
        if plen < 0 or plen + size > s_max:
            raise RuntimeError(f"tree_attention: request {b}: prefix_lens + tree tokens = "
                               f"{plen} + {size} exceeds the cache length S_max={s_max}")


def _flash_attn_applies(use_flash_attn: bool | None, q: torch.Tensor, mode: int) -> bool:
    if use_flash_attn is False or q.device.type != "cuda" or mode != ATTN_FULL:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        if use_flash_attn:
            raise
        return False
    return True


def _tree_attention_flash(q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale, out,
                          lse):
    """Prefix part by flash_attn_with_kvcache, tree part by our kernel, merged by LSE.

    Untested here (no GPU). Requests are padded to T_pad = min(N, 64) queries, so no host sync
    is needed: node n of request b goes to slot (b, n - indptr[b]).
    """
    from flash_attn import flash_attn_with_kvcache

    n, heads, dim = q.shape
    batch = tree_indptr.numel() - 1
    t_pad = min(n, MAX_TREE_NODES)
    nodes = torch.arange(n, device=q.device, dtype=torch.int32)
    req = torch.searchsorted(tree_indptr[1:], nodes, right=True).long()
    local = (nodes - tree_indptr[req]).long().clamp_(max=t_pad - 1)
    q_pad = q.new_zeros(batch, t_pad, heads, dim)
    q_pad[req, local] = q
    prefix_out, prefix_lse = flash_attn_with_kvcache(
        q_pad, kv_cache[layer, 0, :batch], kv_cache[layer, 1, :batch],
        cache_seqlens=prefix_lens, softmax_scale=scale, causal=False, return_softmax_lse=True,
    )
    prefix_out = prefix_out[req, local]  # [N, H, D]
    prefix_lse = prefix_lse[req, :, local].float()  # FA's [B, H, S] -> [N, H]
    # FA marks a row without keys (prefix 0) with +inf; ours is -inf.
    prefix_lse = torch.where(torch.isinf(prefix_lse), float("-inf"), prefix_lse)
    tree_out, tree_lse = tree_attention(
        q, kv_cache, layer, prefix_lens, tree_indptr, mask_bits, scale, ATTN_TREE_ONLY,
        return_lse=True, use_flash_attn=False,
    )
    merge_attn_states(prefix_out, prefix_lse, tree_out, tree_lse, out=out, lse=lse)


# ---------------------------------------------------------------------------------------------
# verify_sampling

VERIFY_CHAIN = 0
VERIFY_TREE_RECURSIVE = 1
VERIFY_TOPK = 2


class SamplingVerifyOutputs(NamedTuple):
    """Outputs of ``verify_sampling`` (B requests, P = max_depth + 1)."""

    accept_local: torch.Tensor  # int32 [B, P]: accepted path as local ids, root first, -1 padded
    accept_len: torch.Tensor  # int32 [B]: accepted drafts (root and final token excluded)
    out_tokens: torch.Tensor  # int64 [B, P]: accepted drafts then the final token, -1 padded


def verify_sampling(
    candidates: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    first_child: torch.Tensor,
    next_sibling: torch.Tensor,
    tree_indptr: torch.Tensor,
    mode: int,
    max_depth: int,
    *,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    out: SamplingVerifyOutputs | None = None,
    scratch: torch.Tensor | None = None,
    validate: bool = False,
) -> SamplingVerifyOutputs:
    """Lossless verification of draft trees at temperature > 0 (speculative rejection sampling).

    From each root the walk tests the children of the current node in sibling order; the first
    accepted child becomes the current node, with its own fresh target row. When every child is
    rejected (or the node is a leaf, or ``max_depth`` drafts are accepted) one final token is
    sampled: the correction from what remains of the target distribution, or the bonus token from
    the last accepted node's target row. The emitted tokens follow the target distribution
    exactly, whatever the draft.

    Modes (``algorithms.md`` section 6):
        VERIFY_CHAIN (0): each node has at most one child; accept x with probability
            min(1, p(x)/q(x)); on rejection sample from norm(max(p - q, 0)).
        VERIFY_TREE_RECURSIVE (1): SpecInfer multi-round: for each child in order, accept with
            min(1, p(x)/q_child(x)), else p <- norm(max(p - q_child, 0)). Exact for siblings drawn
            independently from q and for siblings drawn without replacement when each child's row
            is q conditioned on its earlier siblings (EAGLE-1).
        VERIFY_TOPK (2): deterministic proposals (EAGLE-2 top-k, no draft_probs): accept x with
            probability p(x) under the current p; on rejection set p(x) = 0 and renormalise.
            A repeated sibling token is skipped.

    Sampling a final token: inverse CDF over the vocabulary in index order at u * sum(weights),
    with partial sums in float64. A residual that loses all its mass through float round-off
    (p <= q everywhere) is not used: the walk keeps the p it had before that sibling.

    Args:
        candidates: int64 [N], the token of each node (roots ignored).
        target_probs: float32 [N, V]; row i is the target distribution after node i, already
            processed by temperature / top-k / top-p.
        draft_probs: float32 [N, V], or None in topk mode; row i is the draft distribution that
            proposed node i (for siblings drawn without replacement, conditioned on the earlier
            siblings). Required in the chain and tree_recursive modes.
        first_child, next_sibling: int32 [N], local ids from ``build_tree`` (-1 for none).
        tree_indptr: int32 [B+1], request b owns nodes ``[indptr[b], indptr[b+1])``.
        mode: VERIFY_CHAIN, VERIFY_TREE_RECURSIVE or VERIFY_TOPK.
        max_depth: the most drafts one request may accept (P = max_depth + 1 columns, at most 64).
        uniforms: float32 [N + B] in [0, 1): uniforms[i] is the coin of node i's acceptance
            test, uniforms[N + b] the coin of request b's final token. The op is deterministic
            given them. When None they are drawn with ``torch.rand(N + B, generator=generator)``
            on the inputs' device, so seeded runs reproduce exactly.
        generator: the generator for the uniforms when they are not given.
        out: preallocated outputs (the hot path); their width must be max_depth + 1.
        scratch: float32 [B, 2, V] working memory for the residual rows (allocated when None;
            pass one to keep the call allocation-free).
        validate: on CUDA, first run the checks of the CPU kernel on host copies (one sync). The
            CPU kernel always checks: a tree of 0 or more than 64 nodes, a child or sibling link
            that is not a later node of the same tree, a tested token outside [0, V), a branching
            tree in chain mode, or a distribution to sample without positive mass raise a
            RuntimeError naming the request and node. Unchecked on CUDA, such input gives
            memory-safe but unspecified results (token -1 for a distribution without mass).

    Returns:
        SamplingVerifyOutputs(accept_local int32 [B, P], accept_len int32 [B],
        out_tokens int64 [B, P]).
    """
    n, batch = candidates.numel(), tree_indptr.numel() - 1
    dev = candidates.device
    if uniforms is None:
        uniforms = torch.rand(n + max(batch, 0), generator=generator, device=dev)
    if out is None:
        width = max_depth + 1
        out = SamplingVerifyOutputs(
            torch.empty(max(batch, 0), width, dtype=torch.int32, device=dev),
            torch.empty(max(batch, 0), dtype=torch.int32, device=dev),
            torch.empty(max(batch, 0), width, dtype=torch.int64, device=dev),
        )
    elif out.accept_local.dim() == 2 and out.accept_local.shape[1] != max_depth + 1:
        raise ValueError(
            f"verify_sampling: out.accept_local has width {out.accept_local.shape[1]}, "
            f"expected max_depth + 1 = {max_depth + 1}"
        )
    if scratch is None:
        vocab = target_probs.shape[-1] if target_probs.dim() == 2 else 0
        scratch = torch.empty(max(batch, 0), 2, vocab, dtype=torch.float32, device=dev)
    if validate and dev.type != "cpu":
        verify_sampling(
            *(t.cpu() if t is not None else None
              for t in (candidates, target_probs, draft_probs, first_child, next_sibling,
                        tree_indptr)),
            mode, max_depth, uniforms=uniforms.cpu(),
        )
    _op("verify_sampling")(
        candidates, target_probs, draft_probs, first_child, next_sibling, tree_indptr, uniforms,
        mode, *out, scratch,
    )
    return out



# ---------------------------------------------------------------------------------------------
# ldlp_mlp

LDLP_BLOCKS = 3
LDLP_MAX_WIDTH = 1024


class LdlpWeights(NamedTuple):
    """The LDLP's weights in the op's layout (PyTorch Linear: out x in), one dtype for all:
    float32 or bfloat16. H is the target's hidden size, W the LDLP width (1 to 1024)."""

    w_in: torch.Tensor  # [W, 2H]: the projection of concat(rms(emb), rms(hidden))
    b_in: torch.Tensor  # [W]
    w_blocks: torch.Tensor  # [3, W, W]: the residual blocks x + silu(w x + b)
    b_blocks: torch.Tensor  # [3, W]
    w_out: torch.Tensor  # [1, W]: the head to one scalar
    b_out: torch.Tensor  # [1]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> LdlpWeights:
        """From the state dict of ``adaeagle_ext.drafters.ldlp.LDLP`` (``proj``, ``blocks.0..2``,
        ``head``); copies (stacks) the blocks, detached and contiguous."""
        blocks = range(LDLP_BLOCKS)
        return cls(
            sd["proj.weight"].detach().contiguous(),
            sd["proj.bias"].detach().contiguous(),
            torch.stack([sd[f"blocks.{i}.weight"].detach() for i in blocks]),
            torch.stack([sd[f"blocks.{i}.bias"].detach() for i in blocks]),
            sd["head.weight"].detach().contiguous(),
            sd["head.bias"].detach().contiguous(),
        )

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> LdlpWeights:
        """From an ``LDLP`` module (see ``from_state_dict``)."""
        return cls.from_state_dict(module.state_dict())

    def to(self, *args, **kwargs) -> LdlpWeights:
        """Every tensor moved/cast like ``Tensor.to``."""
        return LdlpWeights(*(t.to(*args, **kwargs) for t in self))


class LdlpOutput(NamedTuple):
    """Outputs of ``ldlp_mlp`` (B rows); raw and max_len are None when not asked for."""

    lengths: torch.Tensor  # int32 [B]: clamp(round(raw), 0, k_max), round half to even
    raw: torch.Tensor | None  # float32 [B]: the unrounded scalar y
    max_len: torch.Tensor | None  # int32 [1]: max of lengths (0 when B = 0), on the device


def ldlp_mlp(
    emb: torch.Tensor,
    hidden: torch.Tensor,
    weights: LdlpWeights | dict[str, torch.Tensor],
    k_max: int,
    eps: float = 1e-6,
    *,
    return_raw: bool = False,
    return_max: bool = False,
    out: LdlpOutput | None = None,
) -> LdlpOutput:
    """Fused LDLP inference (AdaEAGLE's draft-length predictor): the next draft length.

    Per row: ``x = w_in @ concat(rms(emb), rms(hidden)) + b_in`` with the weightless
    ``rms(v) = v / sqrt(mean(v^2) + eps)``; three residual blocks
    ``x = x + silu(w_blocks[l] @ x + b_blocks[l])``; ``raw = w_out @ x + b_out``;
    ``lengths = clamp(round(raw), 0, k_max)``, rounding half to even like ``torch.round``
    (2.5 -> 2, 3.5 -> 4) and NaN to 0. All arithmetic is fp32 whatever the storage dtypes.

    Args:
        emb: [B, H] float32 or bfloat16, the embedding of each row's last accepted token.
        hidden: [B, H], emb's dtype: the target's final-normed hidden state at that token.
        weights: ``LdlpWeights`` (float32 or bfloat16, W from 1 to 1024), or a dict with either
            its field names or an ``LDLP`` module's state-dict names.
        k_max: largest length returned, >= 0.
        eps: > 0, added to the mean square in both RMS norms.
        return_raw: also return the unrounded scalar (float32 [B]).
        return_max: also return the batch maximum of lengths (int32 [1], on the device, so a
            caller can size the draft without a host sync).
        out: preallocated outputs (the hot path); its None fields are not computed and the two
            flags are ignored.

    Returns:
        LdlpOutput(lengths int32 [B], raw float32 [B] or None, max_len int32 [1] or None).
    """
    if not isinstance(weights, LdlpWeights):
        weights = (LdlpWeights(**weights) if "w_in" in weights
                   else LdlpWeights.from_state_dict(weights))
    if out is None:
        batch, dev = emb.shape[0], emb.device
        out = LdlpOutput(
            torch.empty(batch, dtype=torch.int32, device=dev),
            torch.empty(batch, dtype=torch.float32, device=dev) if return_raw else None,
            torch.empty(1, dtype=torch.int32, device=dev) if return_max else None,
        )
    _op("ldlp_mlp")(emb, hidden, *weights, k_max, eps, *out)
    return out


# ---------------------------------------------------------------------------------------------
# linear

from adaeagle_ext.ref import (  # noqa: E402, F401  (the ggml type numbers)
    GGML_BF16,
    GGML_BLOCKS,
    GGML_F16,
    GGML_F32,
    GGML_Q4_0,
    GGML_Q4_1,
    GGML_Q8_0,
)


def ggml_row_bytes(ggml_type: int, k: int) -> int:
    """Bytes of one packed row of K weights of ``ggml_type`` (K a multiple of its block)."""
    if ggml_type not in GGML_BLOCKS:
        raise ValueError(f"ggml type {ggml_type} is not supported by linear; supported: "
                         f"{sorted(GGML_BLOCKS)}")
    block, nbytes = GGML_BLOCKS[ggml_type]
    if k % block:
        raise ValueError(f"K={k} is not a multiple of {block}, the block size of type {ggml_type}")
    return k // block * nbytes


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    ggml_type: int,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    act_quant: int = 0,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` with W kept in its packed GGUF blocks, batch-invariant.

    Every output element is summed in one fixed order (8 fp32 lanes over k, fused
    multiply-adds, a fixed lane tree; see ``csrc/cpu/linear.h``) whatever the number of rows,
    the other rows or the thread count, so a row computed alone is bit-identical to the same
    row inside any batch. Weights are dequantised in registers exactly as
    ``gguf.quants.dequantize`` does; accumulation is fp32.

    Args:
        x: [..., K] float32 or bfloat16.
        weight: uint8 [N, row_bytes], row n = output n's K weights in ggml blocks of
            ``ggml_type``: F32 (0), F16 (1), Q4_0 (2), Q4_1 (3), Q8_0 (8) or BF16 (30);
            K must be a multiple of the block size (32 for the Q types).
        ggml_type: the ggml type number (``gguf.GGMLQuantizationType``).
        bias: optional float32 [N], added last.
        out: optional [..., N] output (float32 or x's dtype) written in place (the hot path).
        out_dtype: dtype of the allocated output when ``out`` is None: x's dtype by default,
            or torch.float32 (the fp32 sum, unrounded).
        act_quant: 0 (float activations, the exact dequantised weights) or 8: on CPU, for
            Q4_0 / Q4_1 / Q8_0 weights, each row of x is quantised per block of 32 values to
            int8 with an fp32 scale (llama.cpp's q8_1 scheme) and every block is an exact
            integer dot product, scaled and accumulated in fp32 in one fixed order
            (``csrc/cpu/linear_q8.h``, ``ref.linear_q8``). Faster, approximate (about 1e-2
            relative to the float result), still batch-invariant and identical on every ISA.
            Ignored for F32 / F16 / BF16 weights, and on CUDA (float activations always).

    Returns:
        y [..., N]: the fp32 sum, rounded once to the output dtype.

    The CPU kernel is chosen at each call: AVX2+FMA+F16C when the CPU has them, else a
    portable loop with the same order; ``ADAEAGLE_LINEAR_ISA=scalar`` forces the latter.
    """
    if x.dim() < 1 or weight.dim() != 2:
        raise ValueError(f"linear: x must be [..., K] and weight uint8 [N, row_bytes], got x "
                         f"shape {tuple(x.shape)} and weight shape {tuple(weight.shape)}")
    k = x.shape[-1]
    n = weight.shape[0]
    x2 = x if x.dim() == 2 else x.reshape(-1, k)  # 2-D: no reshape call on the hot path
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(*x.shape[:-1], n, dtype=out_dtype or x.dtype, device=x.device)
    elif out.shape != (*x.shape[:-1], n):
        raise ValueError(f"linear: out must have shape {(*x.shape[:-1], n)}, got "
                         f"{tuple(out.shape)}")
    _op("linear")(x2, weight, ggml_type, bias,
                  out if out.dim() == 2 else out.view(x2.shape[0], n), act_quant)
    return out



# ---------------------------------------------------------------------------------------------
# rms_norm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of each row, in HF Llama's order, batch-invariant.

    ``out = weight * round(x * rsqrt(mean(x^2) + eps))``: the mean square and the scaling in
    fp32, ``round`` to x's dtype, then the product with weight rounded to x's dtype again
    (``ref.rms_norm``). Each row's sum of squares runs in one fixed order, so a row alone and
    the same row in any batch give identical bits.

    Args:
        x: [..., H] float32 or bfloat16 (float16 too on CUDA).
        weight: [H], x's dtype.
        eps: >= 0, added to the mean square.
        out: optional [..., H] output of x's dtype (may be x itself: normalised in place).

    Returns:
        out [..., H].
    """
    if x.dim() < 1:
        raise ValueError("rms_norm: x must be [..., H], got a 0-d tensor")
    h = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, h)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape:
        raise ValueError(f"rms_norm: out must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(out.shape)}")
    _op("rms_norm")(x2, weight, eps, out if out.dim() == 2 else out.view(x2.shape))
    return out


# ---------------------------------------------------------------------------------------------
# rope_store_kv


def _rope_tables_2d(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin as [N, D] (``rope_cos_sin`` gives [N, 1, D])."""
    if cos.dim() == 3:
        cos = cos.view(cos.shape[0], cos.shape[2])
    if sin.dim() == 3:
        sin = sin.view(sin.shape[0], sin.shape[2])
    return cos, sin


def rope_store_kv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    req: torch.Tensor,
    rows: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    *,
    q_out: torch.Tensor | None = None,
    validate: bool = False,
) -> torch.Tensor:
    """Rotary embedding of q and k plus the K/V cache write of N tokens, in one op.

    Bit for bit what the model's PyTorch code computes (``ref.rope_store_kv``): with
    ``rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])``, each q and k head becomes
    ``x * cos + rotate_half(x) * sin`` where both products and the sum are rounded to the
    dtype on their own (fp32 arithmetic, no FMA); k goes to ``kv_cache[layer, 0, req[i],
    rows[i]]`` and v, unchanged, to ``kv_cache[layer, 1, req[i], rows[i]]``. Other cache rows
    are untouched. The (req, row) pairs should be distinct (else one of the writes wins).

    Args:
        qkv: [N, (H + 2 * Hkv) * D] float32 or bfloat16 (float16 too on CUDA), contiguous: each
            token's H query heads, then Hkv key heads, then Hkv value heads; D even.
        cos, sin: [N, D] or [N, 1, D] (``rope_cos_sin``'s tables), qkv's dtype.
        kv_cache: [L, 2, B, S_max, Hkv, D], qkv's dtype, contiguous; written in place.
        layer: in [0, L).
        req, rows: int64 [N], each token's request (< B) and cache row (< S_max).
        num_heads, num_kv_heads: H and Hkv.
        q_out: optional preallocated [N, H, D] of qkv's dtype (the hot path); it and kv_cache
            must not share memory with the inputs.
        validate: on CUDA, check req and rows on the host first (one sync). The CPU kernel
            always checks them before writing anything (a RuntimeError naming the token);
            unvalidated out-of-range tokens on CUDA write no cache row.

    Returns:
        q_out [N, H, D], the roped queries.
    """
    cos, sin = _rope_tables_2d(cos, sin)
    if q_out is None:
        dim = kv_cache.shape[-1] if kv_cache.dim() == 6 else 0
        q_out = torch.empty(qkv.shape[0], num_heads, dim, dtype=qkv.dtype, device=qkv.device)
    if validate and qkv.device.type != "cpu" and kv_cache.dim() == 6:
        _validate_cache_rows("rope_store_kv", req, rows, kv_cache.shape[2], kv_cache.shape[3])
    _op("rope_store_kv")(qkv, cos, sin, kv_cache, layer, req, rows, num_heads, num_kv_heads,
                         q_out)
    return q_out


# ---------------------------------------------------------------------------------------------
# decoder_layers


def decoder_layers(
    x: torch.Tensor,
    norms: list[torch.Tensor],
    weights: list[torch.Tensor],
    ggml_types: list[int],
    act_quants: list[int],
    qkv_biases: list[torch.Tensor | None],
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: torch.Tensor,
    req: torch.Tensor,
    rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    scale: float,
) -> torch.Tensor:
    """All L layers of a Llama decoder on packed weights, in one call, on x in place.

    Layer l runs, on N tokens of a ragged batch of trees (chains, one token per request in a
    decode step):
    ``h = rms_norm(x, norms[2l])``; ``qkv = linear(h, weights[4l]) + qkv_biases[l]``;
    ``q = rope_store_kv(qkv, cos, sin, kv_cache, l, req, rows)``;
    ``x += linear(tree_attention(q, kv_cache, l, ...), weights[4l+1])``;
    ``h = rms_norm(x, norms[2l+1])``; ``g, u = linear(h, weights[4l+2])`` split in halves;
    ``x += linear(silu(g) * u, weights[4l+3])``. Every step is the op (or ATen op) the model's
    modules call, in their order and dtype, so x ends bit-identical to them; each step is as
    batch-invariant as its op. ``ref.decoder_layers`` is the same in reference ops.

    Args:
        x: [N, hidden] float32 or bfloat16, the residual stream (embeddings in, last layer's
            output out), contiguous; updated in place.
        norms: 2L tensors [hidden] of x's dtype: each layer's input and post-attention norm.
        weights: 4L uint8 packed weights (``ops.linear`` layout): each layer's fused q/k/v
            [(H + 2 Hkv) D rows], o [hidden rows], fused gate/up [2 I rows], down [hidden rows].
        ggml_types, act_quants: 4L ints, each weight's ggml type and ``linear`` act_quant.
        qkv_biases: L entries, float32 [(H + 2 Hkv) D] or None.
        cos, sin: [N, D] RoPE tables of x's dtype.
        kv_cache: [L, 2, B, S_max, Hkv, D] of x's dtype; token i's k and v go to rows
            ``[l, 0 / 1, req[i], rows[i]]``.
        req, rows: int64 [N]. prefix_lens: int32 [B]. tree_indptr: int32 [B+1].
        mask_bits: int64 [N] (``build_tree``).
        num_heads, num_kv_heads: H and Hkv. eps: the norms' epsilon. scale: softmax scale.

    Returns:
        x.
    """
    _op("decoder_layers")(x, norms, weights, ggml_types, act_quants, qkv_biases, cos, sin,
                          kv_cache, req, rows, prefix_lens, tree_indptr, mask_bits, num_heads,
                          num_kv_heads, float(eps), float(scale))
    return x


# ---------------------------------------------------------------------------------------------
# eagle_head_layer


def eagle_head_layer(
    tokens: torch.Tensor,
    features: torch.Tensor,
    embed: torch.Tensor,
    weights: list[torch.Tensor],
    ggml_types: list[int],
    act_quants: list[int],
    biases: list[torch.Tensor | None],
    norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: torch.Tensor,
    req: torch.Tensor,
    rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    tree_indptr: torch.Tensor,
    mask_bits: torch.Tensor,
    new_index: torch.Tensor | None,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    scale: float,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward of an EAGLE-1 draft head on packed weights, in one call.

    For the M new nodes of a ragged batch of draft trees:
    ``x = linear(cat(embed[tokens], features), weights[0]) + biases[0]``;
    ``q = rope_store_kv(linear(x, weights[1]) + biases[1], cos, sin, kv_cache, 0, req, rows)``;
    ``x += linear(tree_attention(q, ...), weights[2]) + biases[2]`` (the attention of all N tree
    nodes, of which only the rows ``new_index`` are computed: the others' K/V were written by
    an earlier call); ``g, u = linear(rms_norm(x, norm), weights[3])`` split in halves;
    ``out = x + linear(silu(g) * u, weights[4])``. Every step is the op (or ATen op) that
    ``EagleHead.forward_tree``'s packed path calls, in its order and dtype, so the output is
    bit-identical to it. ``ref.eagle_head_layer`` is the same in reference ops.

    Args:
        tokens: int64 [M]. features: [M, hidden] of embed's dtype.
        embed: [V, hidden] float32 or bfloat16, the dense embedding table.
        weights: 5 uint8 packed weights (``ops.linear`` layout): fc [hidden rows, 2 hidden
            inputs], fused q/k/v [(H + 2 Hkv) D rows], o [hidden rows], fused gate/up [2 I rows],
            down [hidden rows].
        ggml_types, act_quants: 5 ints, each weight's ggml type and ``linear`` act_quant.
        biases: 3 entries (fc, q/k/v, o), each float32 [rows] or None.
        norm: [hidden] of embed's dtype, the post-attention norm (the layer has no input norm).
        cos, sin: [M, D] RoPE tables of embed's dtype.
        kv_cache: [1, 2, B, S_max, Hkv, D] of embed's dtype; new node i's k and v go to rows
            ``[0, 0 / 1, req[i], rows[i]]``.
        req, rows: int64 [M]. prefix_lens: int32 [B]. tree_indptr: int32 [B+1].
        mask_bits: int64 [N] (``build_tree``) for all N nodes of the trees.
        new_index: int64 [M], the new nodes' indices among the N, or None when M == N.
        num_heads, num_kv_heads: H and Hkv. eps: the norm's epsilon. scale: softmax scale.
        out: optional preallocated [M, hidden] of embed's dtype.

    Returns:
        out [M, hidden], the predicted features of the new nodes.
    """
    cos, sin = _rope_tables_2d(cos, sin)
    if out is None:
        out = torch.empty(tokens.shape[0], embed.shape[-1], dtype=embed.dtype,
                          device=embed.device)
    _op("eagle_head_layer")(tokens, features, embed, weights, ggml_types, act_quants, biases,
                            norm, cos, sin, kv_cache, req, rows, prefix_lens, tree_indptr,
                            mask_bits, new_index, num_heads, num_kv_heads, float(eps),
                            float(scale), out)
    return out


def _validate_cache_rows(op: str, req: torch.Tensor, rows: torch.Tensor, batch: int,
                         s_max: int) -> None:
    """Host-side version of the CPU kernel's req/rows checks (one sync), for CUDA inputs."""
    for i, (r, row) in enumerate(zip(req.cpu().tolist(), rows.cpu().tolist(), strict=True)):
        if not 0 <= r < batch:
            raise RuntimeError(f"{op}: req[{i}]={r} is out of range [0, {batch}) (kv_cache dim 2)")
        if not 0 <= row < s_max:
            raise RuntimeError(f"{op}: rows[{i}]={row} is out of range [0, {s_max}) "
                               "(kv_cache dim 3)")


# ---------------------------------------------------------------------------------------------
# aded_draft


class DraftTree(NamedTuple):
    """A padded draft tree of one request (``aded_draft``, ``aded_paths_to_tree``)."""

    parents: torch.Tensor  # int32 [max_nodes]: topological, root 0 has -1; -1 past num_nodes
    tokens: torch.Tensor  # int64 [max_nodes]: token per node, root = last context token; -1 pad
    num_nodes: torch.Tensor  # int32 [1]: nodes in use, root included (>= 2)


def _empty_tree(max_nodes: int) -> DraftTree:
    # A negative size would fail here without naming the argument: the op checks the range.
    size = max(max_nodes, 0)
    return DraftTree(torch.empty(size, dtype=torch.int32),
                     torch.empty(size, dtype=torch.int64),
                     torch.empty(1, dtype=torch.int32))


def aded_draft(
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    online: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    context: torch.Tensor,
    *,
    iterations: int = 150,
    max_len: int = 4,
    top_paths: int = 24,
    max_nodes: int = MAX_TREE_NODES,
    c1: float = 32.0,
    c2: float = 8.0,
    fallback_token: int = 100,
    seed: int = 0,
    out: DraftTree | None = None,
) -> DraftTree:
    """ADED's MCTS draft search over a tri-gram table (CPU only).

    Rows are CSR keyed by the bigram ``t1 << 32 | t2`` (see ``drafters/trigram.py``). The
    search starts from the last two context tokens, runs ``iterations`` PUCT iterations with
    paths of at most ``max_len`` nodes counting the root, keeps the ``top_paths`` most visited
    paths, extends each greedily by one token and merges them into a tree of at most
    ``max_nodes`` nodes. When nothing is found (unseen bigram, one-token context) the tree is
    the root plus ``fallback_token``. Same inputs and seed give the same tree.

    Args:
        table: stored table (keys int64 [K] strictly ascending, offsets int32 [K+1], succ int32
            [E], vals float32 [E]); never modified.
        online: per-generation overlay in the same layout; its values replace the stored value
            of the same successor or add one.
        context: int64 [C >= 1], the committed tokens; the last one is the tree's root.
        iterations, max_len, top_paths, max_nodes, c1, c2: search knobs (ADED's defaults).
        fallback_token: the one draft token when nothing is retrieved.
        seed: rollout RNG seed.
        out: optional preallocated DraftTree (the hot path).

    Returns:
        DraftTree; ``parents[:n], tokens[:n]`` with ``n = num_nodes`` feed ``build_tree``.
    """
    out = _empty_tree(max_nodes) if out is None else out
    _op("aded_draft")(*table, *online, context, iterations, max_len, top_paths, max_nodes, c1,
                      c2, fallback_token, seed, *out)
    return out


def aded_paths_to_tree(
    paths: torch.Tensor,
    path_lens: torch.Tensor,
    root_token: int,
    max_nodes: int = MAX_TREE_NODES,
    *,
    out: DraftTree | None = None,
) -> DraftTree:
    """Merges ranked token paths into one draft tree (CPU only): each path (tokens after the
    root) follows existing nodes while their tokens match and adds new nodes while fewer than
    ``max_nodes`` exist, so duplicates and shared prefixes are stored once and later paths are
    trimmed first.

    Args:
        paths: int64 [P, L], best first, each row's first ``path_lens[p]`` entries used.
        path_lens: int32 [P], each in [0, L].
        root_token: the token of node 0.
        max_nodes: 2 to 64.

    Returns:
        DraftTree in node-creation (topological) order.
    """
    out = _empty_tree(max_nodes) if out is None else out
    _op("aded_paths_to_tree")(paths, path_lens, root_token, max_nodes, *out)
    return out


# ---------------------------------------------------------------------------------------------
# fake (meta) implementations: every op only writes its outputs in place, so one no-op serves
# all of them.


def _register_fakes() -> None:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("adaeagle::")]
    for name in names:
        torch.library.register_fake(name)(lambda *args, **kwargs: None)


if extension_available():
    _register_fakes()
