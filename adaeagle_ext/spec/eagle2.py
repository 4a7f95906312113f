"""``eagle2``: EAGLE-2's context-aware dynamic tree.

Expansion: the root's top_k children start the frontier; for ``depth - 1`` more levels the
frontier (the top_k candidates of the newest level by cumulative log-probability) is fed through
the head in one forward, and each frontier node proposes its top_k children (score = parent
score + child log-prob). Reranking: the best ``total_tokens - 1`` candidates over all levels
(ties to the shallower, then the earlier node; a child never outscores its parent, so the
chosen set is a connected tree) become the draft, in generation order after the root.

Drafting ignores the temperature (the head's raw distribution); at T > 0 the proposals are
deterministic, verified with ``verify_sampling``'s top-k rule.

``depth`` here is the tree's depth (draft levels); EAGLE-2's code calls 1 + its ``depth`` that.
"""

from __future__ import annotations

import torch

from adaeagle_ext import ops
from adaeagle_ext.spec.chain_options import parse_options
from adaeagle_ext.spec.eagle_base import EagleBase, csr_tree, depth_caps
from adaeagle_ext.spec.strategy import DraftTree, StepState, register

# Chosen on the 2-core CPU with the shipped head: a verify pass over T tokens costs more as T
# grows, so small trees beat EAGLE-2's GPU-sized ones (top_k 6, depth 5, 20 tokens: 0.5x
# `ar`). Session 7 (30 Spec-Bench questions): (2, 2, 3) 0.95x `ar`, (3, 3, 6) 0.74x;
# benchmarks/README.md.
DEFAULT_TOP_K = 2
DEFAULT_DEPTH = 2
DEFAULT_TOTAL_TOKENS = 3


@register
class Eagle2(EagleBase):
    name = "eagle2"
    sampling_mode = ops.VERIFY_TOPK

    def __init__(self, spec: str | None = None, head=None, top_k: int | None = None,
                 depth: int | None = None, total_tokens: int | None = None):
        super().__init__(head)
        opts = parse_options(self.name, spec, ("top_k", "depth", "total_tokens"), integer=True)
        self.top_k = top_k or opts.get("top_k", DEFAULT_TOP_K)
        self.depth = depth or opts.get("depth", DEFAULT_DEPTH)
        self.total_tokens = total_tokens or opts.get("total_tokens", DEFAULT_TOTAL_TOKENS)
        if not 1 <= self.top_k <= 63 or self.depth < 1:
            raise ValueError(f"eagle2 needs 1 <= top_k <= 63 and depth >= 1, got top_k="
                             f"{self.top_k}, depth={self.depth}")
        if not 2 <= self.total_tokens <= 64:
            raise ValueError(f"eagle2 total_tokens must be in [2, 64], got {self.total_tokens}")
        if self.top_k * (self.depth - 1) > 63:
            raise ValueError("eagle2 feeds top_k * (depth - 1) nodes per step; keep it <= 63")
        self.max_tree_nodes = self.total_tokens

    def propose(self, state: StepState) -> DraftTree:
        act = state.active.nonzero().flatten().tolist()
        cands = self.expand(state, act, depth_caps(state, act, self.depth))
        nodes = [tree_nodes(c, rank(c)[:self.total_tokens - 1]) for c in cands]
        self.draft_q = None
        return csr_tree(act, state.roots.numel(), state.roots, nodes)

    def expand(self, state: StepState, act: list[int], caps: list[int]) -> list[list[tuple]]:
        """Refresh the head, then grow each active request's candidates to its depth cap.

        Args:
            act: the active requests (batch indices, ascending); caps: per active request,
                the levels to expand (0: no candidates, only the root is drafted).

        Returns:
            per active request, its candidates as (score, depth, parent candidate or -1,
            token, index) tuples; index is the position in the list, parents come first.
        """
        n_act = len(act)
        depth = max(caps, default=0)
        root_feats = self.refresh(state)
        cands: list[list[tuple]] = [[] for _ in act]
        frontier: list[list[int]] = [[] for _ in act]  # candidate ids fed at the last level
        feats: list[dict] = [dict() for _ in act]  # candidate id -> predicted feature
        fed: list[dict] = [dict() for _ in act]  # candidate id -> fed index
        k = self.top_k
        live = [i for i in range(n_act) if caps[i] >= 1]
        src = root_feats[live] if live else None  # features proposing the next level
        src_owner = [(i, -1) for i in live]  # (request, parent candidate)
        for level in range(1, depth + 1):
            if not src_owner:
                break
            logp = torch.log_softmax(self.draft_logits(src), dim=-1)
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            ids = self.head.to_target_ids(top.indices)
            new_by_req: dict[int, list[int]] = {}
            vals, toks = top.values.tolist(), ids.tolist()
            for j, (i, par) in enumerate(src_owner):
                base = 0.0 if par < 0 else cands[i][par][0]
                for v, tok in zip(vals[j], toks[j], strict=True):
                    c = len(cands[i])
                    cands[i].append((base + v, level, par, tok, c))
                    new_by_req.setdefault(i, []).append(c)
            # the next frontier: top_k new candidates by score, for requests that go deeper
            grow = [i for i in new_by_req if caps[i] > level]
            for i in grow:
                best = sorted(new_by_req[i], key=lambda c: (-cands[i][c][0], c))[:k]
                frontier[i] = best
            pairs = [(i, c) for i in grow for c in frontier[i]]
            if not pairs:
                break
            parents = [cands[i][c][2] for i, c in pairs]
            out, idx = self.feed(
                [act[i] for i, _ in pairs],
                [-1 if p < 0 else fed[i][p] for (i, _), p in zip(pairs, parents, strict=True)],
                torch.tensor([cands[i][c][3] for i, c in pairs], dtype=torch.int64),
                torch.stack([root_feats[i] if p < 0 else feats[i][p]
                             for (i, _), p in zip(pairs, parents, strict=True)]))
            for j, (i, c) in enumerate(pairs):
                feats[i][c] = out[j]
                fed[i][c] = idx[j]
            src = out
            src_owner = pairs
        return cands


def rank(cands: list[tuple]) -> list[int]:
    """Candidate indices in reranking order: score descending, ties to the shallower, then the
    earlier node. A child never outscores its parent, so every prefix is a connected tree."""
    return [c[4] for c in sorted(cands, key=lambda x: (-x[0], x[1], x[4]))]


def tree_nodes(cands: list[tuple], chosen: list[int]) -> list[tuple[int, int]]:
    """The chosen candidates (a connected set) as (token, parent local id) nodes in generation
    order after the root (local ids from 1)."""
    chosen = sorted(chosen)
    local = {c: j + 1 for j, c in enumerate(chosen)}
    return [(cands[c][3], 0 if cands[c][2] < 0 else local[cands[c][2]]) for c in chosen]
