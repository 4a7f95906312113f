"""Forward inputs (positions, CSR offsets, ancestor bit rows) for chains and draft trees."""

from __future__ import annotations

import torch

from adaeagle_ext import ref

MAX_TREE_NODES = ref.MAX_TREE_NODES

# Row i of a chain sees nodes 0..i: the low i+1 bits set (all 64 bits is -1 as int64).
_CHAIN_BITS = torch.tensor(
    [((1 << (i + 1)) - 1) - ((1 << 64) if i == 63 else 0) for i in range(MAX_TREE_NODES)],
    dtype=torch.int64,
)


def chain_inputs(sizes: torch.Tensor, prefix_lens: torch.Tensor):
    """Inputs for a ragged batch of chains (prefill chunks, one-token decode, chain drafts).

    Args:
        sizes: int32/int64 [B], nodes of each request's chain (0..64; 0 = request idle).
        prefix_lens: int32 [B], committed tokens before each chain.

    Returns:
        positions int64 [N], tree_indptr int32 [B+1], mask_bits int64 [N] (N = sizes.sum()).
    """
    sizes = sizes.to(torch.int64)
    if sizes.numel() and (int(sizes.max()) > MAX_TREE_NODES or int(sizes.min()) < 0):
        raise ValueError(f"chain sizes must lie in [0, {MAX_TREE_NODES}], got {sizes.tolist()}")
    indptr = torch.zeros(sizes.numel() + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=indptr[1:])
    n = int(indptr[-1])
    req = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    local = torch.arange(n) - indptr[req]
    positions = prefix_lens.to(torch.int64)[req] + local
    return positions, indptr.to(torch.int32), _CHAIN_BITS[local]


def tree_inputs(parents: torch.Tensor, tree_indptr: torch.Tensor, prefix_lens: torch.Tensor):
    """Inputs for a ragged batch of draft trees (``ref.build_tree`` semantics).

    Args:
        parents: int32 [N], local parent ids, -1 for each root, parents before children.
        tree_indptr: int32 [B+1].
        prefix_lens: int32 [B].

    Returns:
        positions int64 [N] (``prefix_len + depth``), mask_bits int64 [N].
    """
    sizes = (tree_indptr[1:] - tree_indptr[:-1]).to(torch.int64)
    n = parents.numel()
    if n and int(sizes.max()) > MAX_TREE_NODES:
        raise ValueError(f"a tree holds at most {MAX_TREE_NODES} nodes, got {sizes.tolist()}")
    req = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    start = tree_indptr.to(torch.int64)[req]
    local = torch.arange(n) - start
    par = parents.to(torch.int64)
    root = par < 0
    if bool((root != (local == 0)).any()) or bool((par >= local).any()):
        raise ValueError(
            "parents must hold -1 at each local node 0 and 0 <= parents[i] < i elsewhere")
    glob_parent = torch.where(root, torch.arange(n), start + par)
    acc = torch.bitwise_left_shift(torch.ones((), dtype=torch.int64), local)
    anc = glob_parent
    # Pointer jumping: after k rounds each row holds its ancestors up to 2^k - 1 levels up.
    for _ in range(MAX_TREE_NODES.bit_length()):
        acc = acc | acc[anc]
        anc = anc[anc]
    depth = ((acc[:, None] >> torch.arange(MAX_TREE_NODES)) & 1).sum(1) - 1
    return prefix_lens.to(torch.int64)[req] + depth, acc
