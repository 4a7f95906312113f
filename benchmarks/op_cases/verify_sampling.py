"""verify_sampling vs the EAGLE-style Python loop (per child: torch.rand, ratio test,
clamp(p - q, 0), normalise; torch.multinomial for the final token), at the default model's
vocabulary (49152), on EAGLE-2-like trees: drafts sampled from the draft rows (recursive), or
the draft's top tokens (topk, against EAGLE-2's accept-w.p.-p(x) loop)."""

from __future__ import annotations

import torch

from adaeagle_ext import ops, ref
from op_cases import Case
from op_cases.build_tree import bushy_parents

TREE_SIZES = (8, 26, 60)
BATCHES = (1, 4)
VOCAB = 49152
MAX_DEPTH = 63


def make_batch(batch: int, size: int, topk: bool, gen: torch.Generator):
    """Trees with a draft distribution D and a target distribution T after every node: peaked
    like a language model's (Gaussian logits of scale 6: the target's top token holds about half
    the mass), the target's logits being the draft's plus unit noise. On these trees 1.7-2.5
    drafts are accepted per request on average (recursive), 0.8-1.0 (topk).
    Node i is drawn from D[parent(i)], its draft row; with topk, the k-th child of a node is
    the k-th most likely token of D there."""
    parent_lists = [bushy_parents(size, gen) for _ in range(batch)]
    parents = torch.tensor([p for tree in parent_lists for p in tree], dtype=torch.int32)
    indptr = torch.arange(0, (batch + 1) * size, size, dtype=torch.int32)
    n = parents.numel()
    draft_logits = torch.randn(n, VOCAB, generator=gen) * 6.0
    target = torch.softmax(draft_logits + torch.randn(n, VOCAB, generator=gen), dim=1)
    after = torch.softmax(draft_logits, dim=1)
    starts = torch.repeat_interleave(indptr[:-1].long(), size)
    parent_rows = starts + parents.long().clamp(min=0)
    draft = after[parent_rows].contiguous()
    if topk:
        ranks = [tree[:i].count(tree[i]) for tree in parent_lists for i in range(size)]
        top = draft.topk(max(ranks) + 1, dim=1).indices
        candidates = top.gather(1, torch.tensor(ranks)[:, None])[:, 0]
    else:
        candidates = torch.multinomial(draft, 1, generator=gen)[:, 0]
    _, _, _, child, sibling, _, _ = ref.build_tree(parents, indptr, torch.zeros(batch), 63, 64)
    return candidates, target, draft, child, sibling, indptr


def children_lists(child: torch.Tensor, sibling: torch.Tensor, indptr: torch.Tensor):
    """Per request, the children of every local node as Python lists (EAGLE keeps the tree as
    host-side structures too)."""
    out = []
    for b in range(indptr.numel() - 1):
        start, end = int(indptr[b]), int(indptr[b + 1])
        kids = []
        for node in range(end - start):
            c, lst = int(child[start + node]), []
            while c != -1:
                lst.append(c)
                c = int(sibling[start + c])
            kids.append(lst)
        out.append(kids)
    return out


def eagle_python(candidates, target, draft, kids, indptr, topk: bool):
    """The Python verification loop of EAGLE-1 (recursive rejection) or, with topk, EAGLE-2's
    deterministic-proposal rule (accept w.p. p(x), zero it and renormalise on rejection)."""
    emitted = []
    for b, tree in enumerate(kids):
        start = int(indptr[b])
        node, tokens = 0, []
        while True:
            p = target[start + node]
            accepted = None
            for c in tree[node]:
                x = int(candidates[start + c])
                r = torch.rand(1)
                if topk:
                    if r <= p[x] / p.sum():
                        accepted = c
                        break
                    p = p.clone()
                    p[x] = 0
                    p = p / p.sum()
                else:
                    q = draft[start + c]
                    if r <= p[x] / q[x]:
                        accepted = c
                        break
                    p = torch.clamp(p - q, min=0)
                    p = p / p.sum()
            if accepted is None or len(tokens) == MAX_DEPTH:
                break
            tokens.append(int(candidates[start + accepted]))
            node = accepted
        tokens.append(int(torch.multinomial(p, 1)))
        emitted.append(tokens)
    return emitted


def cases(device: str) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for mode, label in ((ops.VERIFY_TREE_RECURSIVE, "recursive"), (ops.VERIFY_TOPK, "topk")):
        for batch in BATCHES:
            for size in TREE_SIZES:
                candidates, target, draft, child, sibling, indptr = make_batch(
                    batch, size, mode == ops.VERIFY_TOPK, gen)
                kids = children_lists(child, sibling, indptr)
                draft_arg = None if mode == ops.VERIFY_TOPK else draft
                args = [t.to(device) if t is not None else None
                        for t in (candidates, target, draft_arg, child, sibling, indptr)]
                buffers = ops.verify_sampling(*args, mode, MAX_DEPTH)
                scratch = torch.empty(batch, 2, VOCAB, device=device)
                rng = torch.Generator(device=device).manual_seed(1)

                def ours(args=args, mode=mode, buffers=buffers, scratch=scratch, rng=rng):
                    ops.verify_sampling(*args, mode, MAX_DEPTH, generator=rng, out=buffers,
                                        scratch=scratch)

                def baseline(c=candidates, t=target, d=draft, k=kids, i=indptr,
                             topk=mode == ops.VERIFY_TOPK):
                    eagle_python(c, t, d, k, i, topk)

                out.append(Case("verify_sampling", f"{label} B={batch} T={size} V={VOCAB}", ours,
                                baseline, "EAGLE python loop"))
    return out
