"""``ddd`` and ``maxconf``: EAGLE chains whose length a draft-confidence threshold sets each step.

- ``ddd[:threshold]`` (DDD on a chain, as AdaEAGLE's baseline): keep drafting while the summed
  log-probability of the drafted tokens stays >= threshold (a log-probability, <= 0).
- ``maxconf[:threshold]``: stop, without the token, once the draft's top probability at the
  next position falls below threshold (a probability in [0, 1]).

Both take ``k_max=`` (the most drafts, default 8), e.g. ``ddd:-1.0,k_max=6``. Confidences are
the draft's own (the head's softmax at T = 0, the sampling proposal q at T > 0), so chain
verification with the drafted q rows stays exact at every temperature.
"""

from __future__ import annotations

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.chain_options import (
    DEFAULT_K_MAX,
    check_k_max,
    check_log_prob_threshold,
    check_probability_threshold,
    parse_options,
)
from adaeagle_ext.spec.stop_rules import CumulativeLogProb, MaxConfidence
from adaeagle_ext.spec.strategy import register

# Chosen on the default model with the shipped head (see the adaeagle_ext/spec README note in
# assets/smollm2-135m-instruct/eagle_head.md, "adaptive chains").
DEFAULT_DDD_THRESHOLD = -1.0
DEFAULT_MAXCONF_THRESHOLD = 0.4


class ThresholdChain(EagleChain):
    """An EagleChain of at most ``k_max`` drafts whose rule holds a checked ``threshold``."""

    default_threshold = 0.0

    def __init__(self, spec: str | None = None, head=None, threshold: float | None = None,
                 k_max: int | None = None):
        opts = parse_options(self.name, spec, ("threshold", "k_max"))
        k = check_k_max(self.name, k_max if k_max is not None else
                        opts.get("k_max", DEFAULT_K_MAX))
        super().__init__(k, head)
        t = threshold if threshold is not None else opts.get("threshold", self.default_threshold)
        self.threshold = self.check_threshold(t)

    def check_threshold(self, threshold) -> float:
        raise NotImplementedError


@register
class DddChain(ThresholdChain):
    name = "ddd"
    default_threshold = DEFAULT_DDD_THRESHOLD

    def check_threshold(self, threshold) -> float:
        return check_log_prob_threshold(self.name, threshold)

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.rule = CumulativeLogProb(self.threshold, batch)


@register
class MaxConfChain(ThresholdChain):
    name = "maxconf"
    default_threshold = DEFAULT_MAXCONF_THRESHOLD

    def check_threshold(self, threshold) -> float:
        return check_probability_threshold(self.name, threshold)

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.rule = MaxConfidence(self.threshold)
