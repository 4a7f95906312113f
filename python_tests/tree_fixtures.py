"""Random draft trees for the kernel tests: parents arrays and ragged batches of them."""

from __future__ import annotations

import torch


def random_parents(gen: torch.Generator, size: int, bushiness: float = 0.5) -> list[int]:
    """A random valid tree of ``size`` nodes in topological order: with probability
    ``bushiness`` a node hangs under a random earlier node, else under the previous one (chains
    when bushiness is 0)."""
    parents = [-1]
    for i in range(1, size):
        if torch.rand((), generator=gen).item() < bushiness:
            parents.append(int(torch.randint(0, i, (), generator=gen)))
        else:
            parents.append(i - 1)
    return parents


def indptr_of(sizes: list[int]) -> list[int]:
    """Tree sizes [B] -> CSR offsets [B + 1]."""
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def random_batch(gen: torch.Generator, batch: int, max_size: int = 64, bushiness: float = 0.5):
    """A ragged batch: (parents int32 [N], tree_indptr int32 [B+1], prefix_lens int32 [B])."""
    sizes = torch.randint(1, max_size + 1, (batch,), generator=gen).tolist()
    parents = [p for s in sizes for p in random_parents(gen, s, bushiness)]
    prefix = torch.randint(0, 300, (batch,), generator=gen, dtype=torch.int32)
    return (
        torch.tensor(parents, dtype=torch.int32),
        torch.tensor(indptr_of(sizes), dtype=torch.int32),
        prefix,
    )
