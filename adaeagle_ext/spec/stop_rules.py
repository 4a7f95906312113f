"""Per-request stop rules for chain drafting: how long each request's chain grows this step.

The chain loop (``spec/chain.py``) asks a rule twice:

1. ``budgets``: before drafting, the most drafts per request (0: no draft, the tree is only
   the root). Length predictors (LDLP) and the oracle decide here.
2. ``after_level``: after each drafted level, per live request, whether the level's token is
   kept (``take``) and whether to draft one more level (``more``). Threshold rules decide here.

Lossless sampling needs only that a decision never depends on the *value* of the token it
keeps: ``take`` at level l may look at the draft distribution of level l and at the tokens of
levels < l, ``more`` at anything drafted so far. Then verification with the drafted proposal
rows stays exact. (``OracleMatch`` breaks this on purpose: it is greedy only.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class LevelDraft:
    """One drafted chain level of the live requests.

    level: depth of the new tokens (1 = the root's child). requests: int64 [M] batch indices.
    tokens: int64 [M] drafted target ids. logits: [M, Nd] the head's draft logits.
    q: float32 [M, V] the sampling proposal rows, or None at temperature 0.
    """

    level: int
    requests: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor
    q: torch.Tensor | None = None

    @cached_property
    def token_logprob(self) -> torch.Tensor:
        """float32 [M]: log-probability of each drafted token under the draft: the proposal q
        when sampling, the head's softmax (temperature 1) when greedy (the token is its argmax)."""
        if self.q is None:
            return torch.log_softmax(self.logits.float(), dim=-1).max(dim=-1).values
        return self.q.gather(1, self.tokens[:, None]).squeeze(1).log()

    @cached_property
    def top_prob(self) -> torch.Tensor:
        """float32 [M]: the draft's largest probability at this position (q when sampling,
        the head's softmax when greedy)."""
        if self.q is None:
            return torch.softmax(self.logits.float(), dim=-1).max(dim=-1).values
        return self.q.max(dim=-1).values


class StopRule:
    """Base rule: draft up to the caps, keep every token (a fixed-length chain)."""

    def budgets(self, requests: list[int], caps: list[int]) -> list[int]:
        """Per request (batch indices, ascending) the most drafts this step; ``caps`` are the
        loop's limits (k_max, fewer near ``max_new_tokens``). Returns values in [0, caps[i]]."""
        return caps

    def after_level(self, draft: LevelDraft) -> tuple[torch.Tensor, torch.Tensor]:
        """(take, more), bool [M] each: keep this level's token; draft another level after it
        (ignored where the token is not kept)."""
        keep = torch.ones(draft.tokens.shape[0], dtype=torch.bool)
        return keep, keep


class CumulativeLogProb(StopRule):
    """DDD on a chain: keep drafting while the summed log-probability of the drafted tokens is
    >= ``threshold`` (<= 0). The first token is always drafted (the empty sum is 0)."""

    def __init__(self, threshold: float, batch: int):
        self.threshold = threshold
        self.total = torch.zeros(batch, dtype=torch.float64)

    def budgets(self, requests, caps):
        self.total[requests] = 0.0
        return caps

    def after_level(self, draft):
        self.total[draft.requests] += draft.token_logprob.double()
        more = self.total[draft.requests] >= self.threshold
        return torch.ones_like(more), more


class MaxConfidence(StopRule):
    """Max-confidence: stop (without this level's token) once the draft's top probability at the
    next position is below ``threshold`` (in [0, 1]); can draft nothing."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def after_level(self, draft):
        ok = draft.top_prob >= self.threshold
        return ok, ok


class PredictedLength(StopRule):
    """AdaEAGLE: draft exactly the predicted length (``predictor.lengths[b]``, read each step;
    capped)."""

    def __init__(self, predictor):
        self.predictor = predictor

    def budgets(self, requests, caps):
        lengths = self.predictor.lengths
        return [min(c, lengths[b]) for b, c in zip(requests, caps, strict=True)]


class PredictedLengthOrLogProb(CumulativeLogProb):
    """AdaEAGLE-DDD: keep drafting while within the predicted length OR while the cumulative
    log-probability is >= ``threshold``; stop when both fail (or at the cap)."""

    def __init__(self, predictor, threshold: float, batch: int):
        super().__init__(threshold, batch)
        self.predictor = predictor

    def after_level(self, draft):
        take, by_logprob = super().after_level(draft)
        lengths = self.predictor.lengths
        within = torch.tensor([draft.level < lengths[b] for b in draft.requests.tolist()],
                              dtype=torch.bool)
        return take, within | by_logprob


class OracleMatch(StopRule):
    """Greedy only: keep a drafted token while it equals the target's known continuation.

    ``expected[b]`` lists the target's next greedy tokens after request b's root this step.
    """

    def __init__(self):
        self.expected: dict[int, list[int]] = {}

    def budgets(self, requests, caps):
        return [min(c, len(self.expected.get(b, ()))) for b, c in zip(requests, caps,
                                                                      strict=True)]

    def after_level(self, draft):
        want = [self.expected[b][draft.level - 1] for b in draft.requests.tolist()]
        ok = draft.tokens == torch.tensor(want, dtype=torch.int64)
        return ok, ok
