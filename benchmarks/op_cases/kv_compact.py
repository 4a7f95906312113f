"""kv_compact vs EAGLE's per-layer gather-and-copy loop over the 6-D cache."""

from __future__ import annotations

import torch

from adaeagle_ext import ops, ref
from op_cases import Case
from op_cases.build_tree import bushy_parents

LAYERS, KV_HEADS, HEAD_DIM, S_MAX, PREFIX = 30, 3, 64, 2048, 256
TREE_SIZES = (8, 26, 60)
BATCHES = (1, 4)
DTYPES = (torch.bfloat16, torch.float32)
PATH_NODES = 6  # root + up to 5 accepted drafts


def accepted_path(size: int, gen: torch.Generator) -> list[int]:
    """A root-to-node path of a bushy tree with up to PATH_NODES nodes that moves rows: the
    longest such path (ties broken at random) among the tree's nodes."""
    while True:
        parents = torch.tensor(bushy_parents(size, gen), dtype=torch.int32)
        paths = ref.build_tree(parents, torch.tensor([0, size], dtype=torch.int32),
                               torch.zeros(1, dtype=torch.int32), 63, 64)[5][0]
        candidates = []
        for row in paths.tolist():
            path = [v for v in row if v >= 0][:PATH_NODES]
            if path != list(range(len(path))):
                candidates.append(path)
        if candidates:
            longest = max(len(p) for p in candidates)
            candidates = [p for p in candidates if len(p) == longest]
            return candidates[int(torch.randint(0, len(candidates), (), generator=gen))]


def eagle_loop(cache: torch.Tensor, prefixes: list[int], sources: list[torch.Tensor]) -> None:
    """EAGLE's compaction: per request, layer and k/v, gather the accepted rows and copy them
    onto the slots after the prefix."""
    for b, (prefix, src) in enumerate(zip(prefixes, sources, strict=True)):
        n = src.numel()
        for layer in range(cache.shape[0]):
            for kv in (0, 1):
                dst = cache[layer, kv, b, prefix:prefix + n]
                dst.copy_(cache[layer, kv, b, src])


def cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for dtype in DTYPES:
        for batch in BATCHES:
            cache = torch.zeros(LAYERS, 2, batch, S_MAX, KV_HEADS, HEAD_DIM, dtype=dtype,
                                device=device)
            for size in TREE_SIZES:
                paths = [accepted_path(size, gen) for _ in range(batch)]
                accept_local = torch.full((batch, PATH_NODES), -1, dtype=torch.int32)
                for b, path in enumerate(paths):
                    accept_local[b, :len(path)] = torch.tensor(path, dtype=torch.int32)
                accept_len = torch.tensor([len(p) - 1 for p in paths], dtype=torch.int32)
                prefix = torch.full((batch,), PREFIX, dtype=torch.int32)
                sources = [torch.tensor(p, device=device) + PREFIX for p in paths]
                args = [t.to(device) for t in (accept_local, accept_len, prefix)]
                seq_lens = torch.empty(batch, dtype=torch.int32, device=device)

                def ours(cache=cache, args=args, seq_lens=seq_lens):
                    ops.kv_compact(cache, *args, out=seq_lens)

                def baseline(cache=cache, sources=sources, batch=batch):
                    eagle_loop(cache, [PREFIX] * batch, sources)

                name = str(dtype).removeprefix("torch.")
                path_lens = ",".join(str(len(p)) for p in paths)
                out.append(Case("kv_compact", f"{name} B={batch} T={size} path={path_lens}",
                                ours, baseline, "EAGLE per-layer copy loop"))
    return out
