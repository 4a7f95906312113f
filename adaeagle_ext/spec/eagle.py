"""``eagle``: EAGLE-1's static draft tree grown by the EAGLE head, one forward per level.

A static tree is a list of rank paths: ``(0, 1)`` is the 2nd-ranked child of the root's
top-ranked child. Greedy: a node's rank-r child is the head's r-th most likely token there.
Sampling (T > 0): a node's k children are drawn from the head's (tempered) distribution without
replacement, and child r's proposal row is that distribution with its earlier siblings removed
and renormalised, which is what ``verify_sampling``'s tree_recursive rule needs to be exact.
"""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from adaeagle_ext.spec.eagle_base import EagleBase, csr_tree, depth_caps, rows_with_roots
from adaeagle_ext.spec.strategy import DraftTree, StepState, register

# EAGLE-1's mc_sim_7b_63: 25 drafts + root, depth 5, four children at the root.
MC_SIM_7B_63 = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1),
)
# A 15-draft tree for CPUs, where verifying 26 tokens costs clearly more than 16.
SMALL = (
    (0,), (1,), (2,),
    (0, 0), (0, 1), (1, 0), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1),
    (0, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 0),
)
TREES = {"mc_sim_7b_63": MC_SIM_7B_63, "small": SMALL}
DEFAULT_TREE = "mc_sim_7b_63"


class StaticTree:
    """Paths sorted by depth; ``parent[i]`` local id (0 = root) of node i (local id i + 1)."""

    def __init__(self, paths):
        paths = sorted({tuple(p) for p in paths}, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(paths)}
        for p in paths:
            if len(p) > 1 and p[:-1] not in index:
                raise ValueError(f"static tree path {p} has no parent {p[:-1]}")
            if any(r < 0 for r in p) or not p:
                raise ValueError(f"static tree path {p} must be a non-empty rank tuple")
        if len(paths) > 63:
            raise ValueError(f"a static tree holds at most 63 drafts, got {len(paths)}")
        self.paths = paths
        self.parent = [0 if len(p) == 1 else index[p[:-1]] + 1 for p in paths]
        self.depth = [len(p) for p in paths]
        self.rank = [p[-1] for p in paths]
        self.max_depth = max(self.depth)
        # children (node ids) of each local id, and how many ranks each parent needs
        self.children: dict[int, list[int]] = {}
        for i, par in enumerate(self.parent):
            self.children.setdefault(par, []).append(i)
        self.width = {par: max(self.rank[c] for c in ch) + 1 for par, ch in self.children.items()}


@register
class EagleTree(EagleBase):
    """``spec``: a tree name (``mc_sim_7b_63`` (default), ``small``)."""

    name = "eagle"
    sampling_mode = ops.VERIFY_TREE_RECURSIVE

    def __init__(self, spec: str | None = None, head=None, tree=None):
        super().__init__(head)
        if tree is None:
            name = spec or DEFAULT_TREE
            if name not in TREES:
                raise ValueError(f"unknown static tree {name!r}; known: {', '.join(TREES)}")
            tree = TREES[name]
        self.tree = StaticTree(tree)
        self.max_tree_nodes = len(self.tree.paths) + 1

    def propose(self, state: StepState) -> DraftTree:
        t = self.tree
        act = state.active.nonzero().flatten().tolist()
        greedy = state.sampling.greedy
        caps = depth_caps(state, act, t.max_depth)
        root_feats = self.refresh(state)
        n_act = len(act)
        token = [dict() for _ in act]  # node id -> token
        qrow = [dict() for _ in act]
        feat = [{0: root_feats[i]} for i in range(n_act)]  # local id -> predicted feature
        fed = [{0: -1} for _ in act]  # local id -> fed index (root: -1)
        for level in range(1, t.max_depth + 1):
            # parents at depth level - 1 that exist, have children, and may grow this deep
            pairs = [(i, par) for i in range(n_act) if caps[i] >= level
                     for par in t.children if par in feat[i]
                     and (par == 0 and level == 1 or par > 0 and t.depth[par - 1] == level - 1)]
            if not pairs:
                break
            logits = self.draft_logits(torch.stack([feat[i][par] for i, par in pairs]))
            q = None if greedy else self.full_vocab_probs(logits, state)
            for j, (i, par) in enumerate(pairs):
                width = t.width[par]
                if greedy:
                    cand = self.head.to_target_ids(
                        torch.topk(logits[j], min(width, logits.shape[-1])).indices).tolist()
                    rows = None
                else:
                    cand, rows = _without_replacement(q[j], width, state.generators[act[i]])
                for c in t.children[par]:
                    r = t.rank[c]
                    if r < len(cand):
                        token[i][c] = cand[r]
                        if rows is not None:
                            qrow[i][c] = rows[r]
            # feed the new nodes that have children of their own
            feed_nodes = [(i, c) for i, par in pairs for c in t.children[par]
                          if c in token[i] and c + 1 in t.children and caps[i] > level]
            if not feed_nodes:
                continue
            par_of = [t.parent[c] for _, c in feed_nodes]
            out, idx = self.feed(
                [act[i] for i, _ in feed_nodes],
                [fed[i][p] for (i, _), p in zip(feed_nodes, par_of, strict=True)],
                torch.tensor([token[i][c] for i, c in feed_nodes], dtype=torch.int64),
                torch.stack([feat[i][p] for (i, _), p in zip(feed_nodes, par_of, strict=True)]))
            for j, (i, c) in enumerate(feed_nodes):
                feat[i][c + 1] = out[j]
                fed[i][c + 1] = idx[j]
        nodes, qrows = [], []
        for i in range(n_act):
            ids = sorted(token[i])  # depth-sorted, and a node exists only if its parent does
            local = {c: k + 1 for k, c in enumerate(ids)}
            nodes.append([(token[i][c], 0 if t.parent[c] == 0 else local[t.parent[c] - 1])
                          for c in ids])
            qrows.append([qrow[i][c] for c in ids] if not greedy else [])
        self.draft_q = None if greedy else rows_with_roots(qrows, self.vocab_size)
        return csr_tree(act, state.roots.numel(), state.roots, nodes)


def _without_replacement(q: torch.Tensor, k: int, gen: torch.Generator):
    """Draw up to k distinct tokens from q (fewer when q has fewer non-zeros); row r is q
    with the first r draws removed, renormalised (the distribution draw r came from)."""
    k = min(k, int((q > 0).sum()))
    rows, cand = [], []
    cur = q
    for _ in range(k):
        tok = int(torch.multinomial(cur, 1, generator=gen))
        rows.append(cur)
        cand.append(tok)
        cur = cur.clone()
        cur[tok] = 0
        total = cur.sum()
        if total <= 0:
            break
        cur = cur / total
    return cand, rows
