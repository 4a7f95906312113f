"""``adaeagle-tree``: the LDLP's predicted length sets each request's EAGLE-2 tree every step.

Rule, per active request and step (k = the LDLP's prediction from the last verify pass):

- depth: k levels (fewer near ``max_new_tokens``; at most ``1 + 63 // top_k`` so a step feeds
  at most 63 nodes). k = 0: no draft, the tree is only the root.
- expansion: EAGLE-2's (``Eagle2.expand``): the top_k children of the root, then for each deeper
  level the top_k frontier candidates by cumulative draft log-probability are fed and each
  proposes top_k children.
- budget: the candidates in EAGLE-2's reranking order (``eagle2.rank``) are taken while they
  pay: n = ``best_draft_size`` over their values exp(cumulative log-prob) (the head is
  calibrated, EAGLE-2 §3.1, so a value estimates the chance its path is accepted and the sum
  over the tree the expected accepted length) with the measured costs: the step's drafting
  ``draft_s(1) + (depth - 1) * draft_s(top_k)`` plus ``verify_s(n + 1)``. At least one node
  when k > 0, at most ``total_tokens - 1``. The costs are batch-1 timings: in a batch each
  request picks its budget as if alone.

Verification is EAGLE-2's: greedy, or the top-k rule at T > 0 (drafting ignores temperature).

For the report, ``predicted_lengths`` holds the LDLP's k behind every step of every request, in
the order of ``GenerationStats.accepted_per_step`` (as in ``adaeagle``).
"""

from __future__ import annotations

import math

from adaeagle_ext.spec.chain_options import parse_options
from adaeagle_ext.spec.eagle2 import Eagle2, rank, tree_nodes
from adaeagle_ext.spec.eagle_base import csr_tree, depth_caps
from adaeagle_ext.spec.ldlp_length import DraftLengthPredictor, resolve_ldlp
from adaeagle_ext.spec.step_costs import StepCosts, best_draft_size, step_costs
from adaeagle_ext.spec.strategy import DraftTree, StepState, register

DEFAULT_TOP_K = 6  # children per frontier node, as EAGLE-2; the costs then choose how many to keep
DEFAULT_TOTAL_TOKENS = 64  # the cap; the measured costs choose the budget below it


@register
class AdaEagleTree(Eagle2):
    """``ldlp``: LDLP module, (module, k_max), path, or None (the shipped file).
    ``costs``: StepCosts to use, or None to measure them at setup (once per process).
    ``top_k``: children per node and frontier width; ``total_tokens``: the most tree tokens."""

    name = "adaeagle-tree"

    def __init__(self, spec: str | None = None, head=None, ldlp=None,
                 top_k: int | None = None, total_tokens: int | None = None,
                 costs: StepCosts | None = None):
        opts = parse_options(self.name, spec, ("top_k", "total_tokens"), integer=True)
        top_k = top_k if top_k is not None else opts.get("top_k", DEFAULT_TOP_K)
        total = total_tokens if total_tokens is not None else opts.get(
            "total_tokens", DEFAULT_TOTAL_TOKENS)
        if not 1 <= top_k <= 63:
            raise ValueError(f"adaeagle-tree top_k must be in [1, 63], got {top_k}")
        if costs is not None and not (isinstance(costs, StepCosts) and costs.draft_sizes):
            raise ValueError("costs must be None or a StepCosts holding draft timings, got "
                             f"{costs!r}")
        super().__init__(head=head, top_k=top_k, depth=1 + 63 // top_k, total_tokens=total)
        self.ldlp_arg = ldlp
        self.costs_arg = costs
        self.predictor: DraftLengthPredictor | None = None
        self.costs: StepCosts | None = None
        self.predicted_lengths: list[int] = []

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        module, k_max = resolve_ldlp(self.ldlp_arg, model)
        if k_max < 0:
            raise ValueError(f"the LDLP's k_max must be >= 0, got {k_max}")
        self.predictor = DraftLengthPredictor(module, k_max, model, batch)
        self.costs = (self.costs_arg if self.costs_arg is not None
                      else step_costs(model, self.head))
        self.predicted_lengths = []

    def observe_prefill(self, tokens, hidden, tree_indptr) -> None:
        super().observe_prefill(tokens, hidden, tree_indptr)
        self.predictor.observe_prefill(tokens, hidden, tree_indptr)

    def observe(self, state, tree, acceptance, hidden) -> None:
        super().observe(state, tree, acceptance, hidden)
        self.predictor.observe(state.active.nonzero().flatten().tolist(), tree.tokens,
                               tree.tree_indptr, acceptance.accept_local,
                               acceptance.accept_len, hidden)

    def propose(self, state: StepState) -> DraftTree:
        act = state.active.nonzero().flatten().tolist()
        self.predicted_lengths.extend(self.predictor.lengths[b] for b in act)
        caps = [min(c, self.predictor.lengths[b])
                for c, b in zip(depth_caps(state, act, self.depth), act, strict=True)]
        cands = self.expand(state, act, caps)
        nodes = []
        for c, depth in zip(cands, caps, strict=True):
            order = rank(c)
            n = self.budget([math.exp(c[j][0]) for j in order], depth) if c else 0
            nodes.append(tree_nodes(c, order[:n]))
        self.draft_q = None
        return csr_tree(act, state.roots.numel(), state.roots, nodes)

    def budget(self, values: list[float], depth: int) -> int:
        """Draft nodes to keep of a depth-``depth`` expansion whose candidates, in reranking
        order, have path values ``values``."""
        costs = self.costs
        fixed = costs.draft_s(1) + (depth - 1) * costs.draft_s(self.top_k)
        return best_draft_size(values, costs, fixed_s=fixed, min_size=1,
                               max_size=self.total_tokens - 1)
