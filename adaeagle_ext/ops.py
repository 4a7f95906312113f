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


# ---------------------------------------------------------------------------------------------
# verify_greedy


# ---------------------------------------------------------------------------------------------
# tree_attention and merge_attn_states


# ---------------------------------------------------------------------------------------------
# verify_sampling


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


# ---------------------------------------------------------------------------------------------
# fake (meta) implementations: every op only writes its outputs in place, so one no-op serves
# all of them.


def _register_fakes() -> None:
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("adaeagle::")]
    for name in names:
        torch.library.register_fake(name)(lambda *args, **kwargs: None)


if extension_available():
    _register_fakes()
