"""``adaeagle`` and ``adaeagle-ddd``: EAGLE chains whose length the LDLP predicts each step.

- ``adaeagle``: draft exactly the LDLP's predicted length (0 allowed: the step is plain
  target decoding and the head's refresh waits for the next drafting step).
- ``adaeagle-ddd[:threshold]``: keep drafting while within the predicted length OR while the
  cumulative draft log-probability stays >= threshold (default -0.6, AdaEAGLE's choice).

The LDLP (``ldlp=``: an ``LDLP`` module, ``(module, k_max)``, a path, or None for the shipped
``assets/<model>/ldlp.safetensors``) reads the last accepted token's embedding and the target's
hidden state there from the verification pass itself (``spec/ldlp_length.py``). Both take
``k_max=`` (the most drafts; default: the k_max the LDLP was trained with).

For the report, ``predicted_lengths`` holds the prediction behind every step of every request,
in the order of ``GenerationStats.draft_tokens`` / ``accepted_per_step``; ``prediction_error``
compares them with the accepted lengths.
"""

from __future__ import annotations

import weakref
from pathlib import Path

from adaeagle_ext.drafters.ldlp import LDLP
from adaeagle_ext.spec import ldlp_length
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.chain_options import check_k_max, check_log_prob_threshold, parse_options
from adaeagle_ext.spec.ldlp_length import DraftLengthPredictor, resolve_ldlp
from adaeagle_ext.spec.stop_rules import PredictedLength, PredictedLengthOrLogProb
from adaeagle_ext.spec.strategy import register

DEFAULT_ADAEAGLE_DDD_THRESHOLD = -0.6  # AdaEAGLE's Table 5


def ldlp_k_max(ldlp) -> int:
    """The k_max an LDLP argument was trained with, read without a target (the shipped file's
    absence raises ``resolve_ldlp``'s error)."""
    if isinstance(ldlp, (tuple, LDLP)):
        return resolve_ldlp(ldlp, None)[1]
    if ldlp is None:
        path = ldlp_length.DEFAULT_LDLP_PATH
        if not path.is_file():
            resolve_ldlp(None, None)  # raises: no LDLP ships for this target
    elif isinstance(ldlp, (str, Path)):
        path = Path(ldlp)
    else:
        raise ValueError(f"ldlp must be an LDLP module, (module, k_max), a path or None, got "
                         f"{type(ldlp).__name__}")
    return int(LDLP.load(path)[1]["k_max"])


class LdlpChain(EagleChain):
    """An EagleChain that runs the LDLP on every prefill / verification pass."""

    option_keys: tuple[str, ...] = ("k_max",)

    def __init__(self, spec: str | None = None, head=None, ldlp=None, k_max: int | None = None,
                 threshold: float | None = None):
        opts = parse_options(self.name, spec, self.option_keys)
        if isinstance(ldlp, tuple) and len(ldlp) != 2:
            raise ValueError("ldlp=(module, k_max) needs exactly two items")
        trained = ldlp_k_max(ldlp)
        super().__init__(check_k_max(self.name, k_max if k_max is not None else
                                     opts.get("k_max", trained)), head)
        self.ldlp_arg = ldlp
        self.threshold = threshold if threshold is not None else opts.get("threshold")
        self._resolved: tuple | None = None  # (weakref to the target, module, k_max)
        self.predicted_lengths: list[int] = []

    def resolve(self, model):
        """(LDLP module, its k_max) for ``model``, loaded once per target."""
        got = self._resolved
        if got is None or got[0]() is not model:
            module, k = resolve_ldlp(self.ldlp_arg, model)
            if module.hidden_size != model.config.hidden_size:
                raise ValueError(f"the LDLP reads hidden size {module.hidden_size}, the target "
                                 f"has {model.config.hidden_size}")
            got = self._resolved = (weakref.ref(model), module, k)
        return got[1], got[2]

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        module, k = self.resolve(model)
        self.predictor = DraftLengthPredictor(module, k, model, batch)
        self.predicted_lengths = []

    def observe_prefill(self, tokens, hidden, tree_indptr) -> None:
        super().observe_prefill(tokens, hidden, tree_indptr)
        self.predictor.observe_prefill(tokens, hidden, tree_indptr)

    def propose(self, state):
        lengths = self.predictor.lengths
        self.predicted_lengths.extend(lengths[b] for b in state.active.nonzero().flatten().tolist())
        return super().propose(state)

    def observe(self, state, tree, acceptance, hidden) -> None:
        super().observe(state, tree, acceptance, hidden)
        self.predictor.observe(state.active.nonzero().flatten().tolist(), tree.tokens,
                               tree.tree_indptr, acceptance.accept_local, acceptance.accept_len,
                               hidden)


@register
class AdaEagle(LdlpChain):
    name = "adaeagle"

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.rule = PredictedLength(self.predictor)


@register
class AdaEagleDdd(LdlpChain):
    name = "adaeagle-ddd"
    option_keys = ("threshold", "k_max")

    def __init__(self, spec: str | None = None, head=None, ldlp=None, k_max: int | None = None,
                 threshold: float | None = None):
        super().__init__(spec, head, ldlp, k_max, threshold)
        self.threshold = check_log_prob_threshold(
            self.name, DEFAULT_ADAEAGLE_DDD_THRESHOLD if self.threshold is None else
            self.threshold)

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.rule = PredictedLengthOrLogProb(self.predictor, self.threshold, batch)


def prediction_error(predicted: list[int], accepted_per_step: list[float]) -> dict:
    """The LDLP's error against the drafts each step accepted.

    Args:
        predicted: ``strategy.predicted_lengths`` (one per request-step).
        accepted_per_step: ``GenerationStats.accepted_per_step`` (same order; bonus included).

    Returns:
        {"steps", "mae", "bias" (mean predicted - accepted), "under", "exact", "over"
        (fractions)}. Under ``adaeagle`` a step accepts at most the predicted drafts, so
        under-prediction is invisible there (a fully accepted step counts as exact);
        ``adaeagle-ddd`` may draft past the prediction and shows it.
    """
    if len(predicted) != len(accepted_per_step):
        raise ValueError(f"{len(predicted)} predictions for {len(accepted_per_step)} steps")
    n = len(predicted)
    if n == 0:
        return dict(steps=0, mae=0.0, bias=0.0, under=0.0, exact=0.0, over=0.0)
    diffs = [p - (int(a) - 1) for p, a in zip(predicted, accepted_per_step, strict=True)]
    return dict(steps=n, mae=sum(abs(d) for d in diffs) / n, bias=sum(diffs) / n,
                under=sum(d < 0 for d in diffs) / n, exact=sum(d == 0 for d in diffs) / n,
                over=sum(d > 0 for d in diffs) / n)
