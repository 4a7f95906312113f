"""build_tree vs EAGLE-2's Python mask / position / retrieve-index construction."""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from op_cases import Case

TREE_SIZES = (8, 26, 60)
BATCHES = (1, 4)


def bushy_parents(size: int, gen: torch.Generator) -> list[int]:
    """An EAGLE-2-like tree: each node under one of the 4 most recent nodes of the previous
    level-ish, so depth grows slowly."""
    return [-1] + [int(torch.randint(max(0, i - 4), i, (), generator=gen)) for i in range(1, size)]


def eagle2_python(parents_per_request: list[torch.Tensor]):
    """EAGLE-2's construction per request: an eye mask with each row OR-ed with its parent's,
    positions from row sums, then a root-to-leaf path walk per leaf."""
    results = []
    for parents in parents_per_request:
        size = parents.numel()
        mask = torch.eye(size, dtype=torch.bool)
        mask[:, 0] = True
        parent_list = parents.tolist()
        for i in range(1, size):
            mask[i].logical_or_(mask[parent_list[i]])
        positions = mask.sum(dim=1) - 1
        max_depth = int(positions.max()) + 1
        has_child = torch.zeros(size, dtype=torch.bool)
        has_child[parents[1:].long()] = True
        leaves = torch.nonzero(~has_child).flatten().tolist()
        retrieve = torch.full((len(leaves), max_depth), -1, dtype=torch.long)
        for row, leaf in enumerate(leaves):
            node, depth = leaf, int(positions[leaf])
            while node != -1:
                retrieve[row, depth] = node
                node, depth = parent_list[node], depth - 1
        results.append((mask, positions, retrieve))
    return results


def cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for batch in BATCHES:
        for size in TREE_SIZES:
            trees = [torch.tensor(bushy_parents(size, gen), dtype=torch.int32)
                     for _ in range(batch)]
            parents = torch.cat(trees).to(device)
            indptr = torch.arange(0, (batch + 1) * size, size, dtype=torch.int32, device=device)
            prefix = torch.full((batch,), 256, dtype=torch.int32, device=device)
            buffers = ops.build_tree(parents, indptr, prefix, 63, 64)

            def ours(parents=parents, indptr=indptr, prefix=prefix, buffers=buffers):
                ops.build_tree(parents, indptr, prefix, 63, 64, out=buffers)

            out.append(Case("build_tree", f"B={batch} T={size}", ours,
                            lambda trees=trees: eagle2_python(trees), "EAGLE-2 python"))
    return out
