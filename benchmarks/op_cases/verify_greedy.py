"""verify_greedy vs EAGLE's tensor cumprod posterior over root-to-leaf paths."""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from op_cases import Case
from op_cases.build_tree import bushy_parents

TREE_SIZES = (8, 26, 60)
BATCHES = (1, 4)
MAX_ACCEPT = 5  # drafts the target agrees with along one chosen path


def eagle_posterior(paths: torch.Tensor, tokens: torch.Tensor, argmax: torch.Tensor):
    """EAGLE's evaluate_posterior on a batch: tokens and target argmax gathered along every
    root-to-leaf path ([B, leaves, W]), cumprod of the matches, the best path, then the
    emitted tokens (accepted drafts + bonus, -1 padded) and the accepted path (global ids)."""
    cand = tokens[paths]
    target = argmax[paths]
    posterior_mask = (cand[:, :, 1:] == target[:, :, :-1]).int()
    accept = torch.cumprod(posterior_mask, dim=2).sum(dim=2)
    accept_len = accept.amax(dim=1)
    best = accept.argmax(dim=1)
    rows = torch.arange(paths.shape[0], device=paths.device)
    width = paths.shape[2]
    pos = torch.arange(width, device=paths.device)
    drafts = torch.cat([cand[rows, best, 1:], cand.new_full((rows.numel(), 1), -1)], dim=1)
    bonus = target[rows, best, accept_len]
    out_tokens = torch.where(pos < accept_len[:, None], drafts, -1)
    out_tokens = torch.where(pos == accept_len[:, None], bonus[:, None], out_tokens)
    accept_local = torch.where(pos <= accept_len[:, None], paths[rows, best], -1)
    return accept_local, accept_len, out_tokens


def make_batch(size: int, batch: int, gen: torch.Generator):
    """Bushy trees with distinct tokens and a target that accepts up to MAX_ACCEPT drafts
    along a random root-to-leaf path of each tree."""
    parents = torch.cat([torch.tensor(bushy_parents(size, gen), dtype=torch.int32)
                         for _ in range(batch)])
    indptr = torch.arange(0, (batch + 1) * size, size, dtype=torch.int32)
    prefix = torch.zeros(batch, dtype=torch.int32)
    trees = ops.build_tree(parents, indptr, prefix, 63, 64)
    candidates = torch.arange(parents.numel(), dtype=torch.int64) + 1000
    target_argmax = torch.full_like(candidates, 7)
    for b in range(batch):
        leaf = int(torch.randint(0, int(trees.num_leaves[b]), (), generator=gen))
        path = [v for v in trees.leaf_paths[b, leaf].tolist() if v >= 0][:MAX_ACCEPT + 1]
        for here, nxt in zip(path, path[1:], strict=False):
            target_argmax[b * size + here] = candidates[b * size + nxt]
    max_depth = int(trees.depth.max())
    return candidates, target_argmax, trees, indptr, max_depth


def eagle_inputs(candidates, target_argmax, trees, indptr, max_depth):
    """Global-index leaf paths [B, max_leaves, max_depth+1] (padding -> a sentinel slot) and
    the token tables with that sentinel appended (never matching)."""
    local = trees.leaf_paths[:, :, :max_depth + 1].long()
    sentinel = candidates.numel()
    paths = torch.where(local >= 0, local + indptr[:-1, None, None].long(), sentinel)
    tokens = torch.cat([candidates, torch.tensor([-1])])
    argmax = torch.cat([target_argmax, torch.tensor([-2])])
    return paths, tokens, argmax


def cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for batch in BATCHES:
        for size in TREE_SIZES:
            candidates, target_argmax, trees, indptr, max_depth = make_batch(size, batch, gen)
            paths, tokens, argmax = (t.to(device) for t in eagle_inputs(
                candidates, target_argmax, trees, indptr, max_depth))
            args = [t.to(device) for t in (candidates, target_argmax, trees.first_child,
                                           trees.next_sibling, indptr)]
            buffers = ops.verify_greedy(*args, max_depth)
            eagle_path, eagle_len, eagle_tokens = eagle_posterior(paths, tokens, argmax)
            offsets = indptr[:-1, None].long().to(device)
            eagle_local = torch.where(eagle_path >= 0, eagle_path - offsets, -1)
            assert torch.equal(buffers.accept_local.long(), eagle_local)
            assert torch.equal(buffers.accept_len.long(), eagle_len)
            assert torch.equal(buffers.out_tokens, eagle_tokens)

            def ours(args=args, max_depth=max_depth, buffers=buffers):
                ops.verify_greedy(*args, max_depth, out=buffers)

            def baseline(paths=paths, tokens=tokens, argmax=argmax):
                eagle_posterior(paths, tokens, argmax)

            accepted = ",".join(str(v) for v in buffers.accept_len.tolist())
            out.append(Case("verify_greedy",
                            f"B={batch} T={size} depth={max_depth} accepted={accepted}",
                            ours, baseline, "EAGLE cumprod posterior"))
    return out
