"""``chain:K``: the EAGLE head drafts a chain of K tokens; the target verifies it in one pass.

Greedy: each draft is the head's argmax. Sampling (T > 0): each draft is sampled from the
head's distribution under the user's temperature / top-k / top-p, and ``verify_sampling``'s
chain rule (accept with min(1, p/q)) keeps the output distribution exactly the target's.

The drafting loop takes an optional per-request stop rule (``spec/stop_rules.py``): the
adaptive chains (``ddd``, ``maxconf``, ``adaeagle``, ``adaeagle-ddd``, ``oracle``) are this
loop with a rule; without one, every request drafts K tokens.
"""

from __future__ import annotations

import dataclasses

import torch

from adaeagle_ext import ops
from adaeagle_ext.spec.eagle_base import EagleBase, csr_tree, depth_caps, rows_with_roots
from adaeagle_ext.spec.stop_rules import LevelDraft, StopRule
from adaeagle_ext.spec.strategy import DraftTree, StepState, register

DEFAULT_CHAIN_LEN = 3


@register
class EagleChain(EagleBase):
    """``spec``: the chain length K (1..63, default 3); with a ``rule``, the most drafts."""

    name = "chain"
    sampling_mode = ops.VERIFY_CHAIN

    def __init__(self, spec: str | int | None = None, head=None):
        super().__init__(head)
        k = DEFAULT_CHAIN_LEN if spec in (None, "") else int(spec)
        if not 1 <= k <= 63:
            raise ValueError(f"chain length must be in [1, 63], got {k}")
        self.k = k
        self.max_tree_nodes = k + 1
        self.rule: StopRule | None = None

    def propose(self, state: StepState) -> DraftTree:
        act = state.active.nonzero().flatten().tolist()
        caps = depth_caps(state, act, self.k)
        rule = self.rule
        if rule is not None:
            caps = rule.budgets(act, caps)
        greedy = state.sampling.greedy
        nodes: list[list[tuple[int, int]]] = [[] for _ in act]
        qrows: list[list[torch.Tensor]] = [[] for _ in act]
        live = [i for i in range(len(act)) if caps[i] > 0]
        fed = [-1] * len(act)
        if live:  # requests that draft nothing keep their pending pairs for a later refresh
            mask = torch.zeros_like(state.active)
            mask[[act[i] for i in live]] = True
            cur = self.refresh(dataclasses.replace(state, active=mask))
        for level in range(1, self.k + 1):
            if not live:
                break
            logits = self.draft_logits(cur)
            q = None
            if greedy:
                toks = self.head.to_target_ids(logits.argmax(-1))
            else:
                q = self.full_vocab_probs(logits, state)
                toks = torch.stack([
                    torch.multinomial(q[j], 1, generator=state.generators[act[i]])[0]
                    for j, i in enumerate(live)])
            take = more = [True] * len(live)
            if rule is not None:
                reqs = torch.tensor([act[i] for i in live], dtype=torch.int64)
                take_t, more_t = rule.after_level(LevelDraft(level, reqs, toks, logits, q))
                take, more = take_t.tolist(), more_t.tolist()
            keep = []
            for j, i in enumerate(live):
                if not take[j]:
                    continue
                nodes[i].append((int(toks[j]), level - 1))
                if not greedy:
                    qrows[i].append(q[j])
                if more[j] and caps[i] > level:
                    keep.append(j)
            live = [live[j] for j in keep]
            if not live:
                break
            cur, idx = self.feed([act[i] for i in live], [fed[i] for i in live],
                                 toks[keep], cur[keep])
            for i, f in zip(live, idx, strict=True):
                fed[i] = f
        tree = csr_tree(act, state.roots.numel(), state.roots, nodes, is_chain=True)
        self.draft_q = None if greedy else rows_with_roots(qrows, self.vocab_size)
        return tree
