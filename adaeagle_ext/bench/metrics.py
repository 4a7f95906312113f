"""Spec-Bench arithmetic over per-turn traces: tokens/s, speedup, tau, draft statistics, and
the LDLP's prediction error.

Spec-Bench (``evaluation/speed.py``): per question, tokens/s = (sum of new tokens over its turns)
/ (sum of wall time over its turns); a task's tokens/s is the mean over its questions; speedup
= a method's mean tokens/s / ``ar``'s mean tokens/s over the same questions, per task and
overall. tau (mean accepted tokens) = tokens committed by decoding steps / decoding steps,
pooled over all steps, bonus token included (``ar`` is 1.00).

The LDLP's error (methods that keep ``predicted_lengths``: ``adaeagle``, ``adaeagle-ddd``,
``adaeagle-tree``) pools every step's (predicted length, drafts accepted) pair of the selection
into ``spec.adaeagle.prediction_error``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from adaeagle_ext.spec.adaeagle import prediction_error

BASELINE = "ar"
OVERALL = "overall"


@dataclass
class TurnResult:
    """One generate call (one turn of one question, one method).

    prompt_ids: the turn's full prompt (the conversation so far, chat template applied).
    token_ids: generated ids (EOS excluded). wall_s: wall time of the call.
    steps: target forwards after the prefill (decoding steps); None where unknown.
    step_tokens: tokens those steps committed (bonus and EOS included); None where unknown.
    draft_tokens: per step, draft nodes proposed (tree size - 1); None where unknown.
    draft_s / verify_s: time drafting / verifying (``GenerationStats``); None where unknown.
    accepted: per step, tokens committed (bonus included; ``accepted_per_step``); None where
    unknown. predicted: per step, the LDLP's predicted draft length (same order as
    ``accepted``); None for methods without an LDLP.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    wall_s: float
    steps: int | None = None
    step_tokens: int | None = None
    draft_tokens: list[int] | None = None
    draft_s: float | None = None
    verify_s: float | None = None
    accepted: list[int] | None = None
    predicted: list[int] | None = None

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class QuestionResult:
    """All turns of one question answered by one method."""

    method: str
    qid: str
    task: str
    turns: list[TurnResult] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(t.new_tokens for t in self.turns)

    @property
    def wall_s(self) -> float:
        return sum(t.wall_s for t in self.turns)

    @property
    def tokens_per_s(self) -> float:
        """Spec-Bench's per-question speed: total new tokens / total wall time."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Summary:
    """Metrics of one method on one task (or ``overall``); None where not measurable."""

    questions: int
    new_tokens: int
    wall_s: float
    tokens_per_s: float
    speedup: float | None
    tau: float | None
    draft_per_step: float | None
    draft_frac: float | None
    verify_frac: float | None
    draft_hist: dict[int, int]
    accept_hist: dict[int, int] = field(default_factory=dict)
    ldlp: dict | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["draft_hist"] = _str_keys(self.draft_hist)
        d["accept_hist"] = _str_keys(self.accept_hist)
        if self.ldlp is not None:
            d["ldlp"] = {**self.ldlp, "predicted_hist": _str_keys(self.ldlp["predicted_hist"])}
        return d


def _str_keys(hist: dict[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(hist.items())}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def histogram(turns: list[TurnResult], attr: str) -> dict[int, int] | None:
    """{value: steps} of the per-step list ``attr`` ("draft_tokens", "accepted", "predicted")
    pooled over ``turns``; None when a turn lacks it."""
    if not turns or any(getattr(t, attr) is None for t in turns):
        return None
    hist: Counter[int] = Counter()
    for t in turns:
        hist.update(int(x) for x in getattr(t, attr))
    return dict(sorted(hist.items()))


def ldlp_error(turns: list[TurnResult]) -> dict | None:
    """The LDLP's error pooled over the steps of ``turns`` (None when a turn has no
    predictions).

    Returns ``prediction_error``'s {"steps", "mae", "bias", "under", "exact", "over"} plus
    "mean_predicted", "mean_accepted_drafts" (accepted tokens - 1; None without steps) and
    "predicted_hist" {predicted length: steps}.
    """
    if not turns or any(t.predicted is None or t.accepted is None for t in turns):
        return None
    predicted = [int(p) for t in turns for p in t.predicted]
    accepted = [int(a) for t in turns for a in t.accepted]
    out = prediction_error(predicted, accepted)
    n = len(predicted)
    out["mean_predicted"] = sum(predicted) / n if n else None
    out["mean_accepted_drafts"] = sum(a - 1 for a in accepted) / n if n else None
    out["predicted_hist"] = histogram(turns, "predicted")
    return out


def summarize(results: list[QuestionResult], baseline: list[QuestionResult] | None) -> Summary:
    """Metrics of one method over a set of questions.

    baseline: ``ar``'s results on the same questions (None: no speedup).
    """
    turns = [t for q in results for t in q.turns]
    tps = _mean([q.tokens_per_s for q in results])
    speedup = None
    if baseline is not None:
        if sorted(q.qid for q in baseline) != sorted(q.qid for q in results):
            raise ValueError("speedup needs the baseline's results on the same questions")
        base = _mean([q.tokens_per_s for q in baseline])
        speedup = tps / base if base > 0 else None
    tau = None
    if turns and all(t.steps is not None for t in turns):
        steps = sum(t.steps for t in turns)
        tau = sum(t.step_tokens for t in turns) / steps if steps else None
    hist = histogram(turns, "draft_tokens") or {}
    n = sum(hist.values())
    draft_per_step = sum(k * c for k, c in hist.items()) / n if n else None
    wall = sum(t.wall_s for t in turns)
    draft_frac = verify_frac = None
    if wall > 0 and turns and all(t.draft_s is not None for t in turns):
        draft_frac = sum(t.draft_s for t in turns) / wall
        verify_frac = sum(t.verify_s for t in turns) / wall
    return Summary(len(results), sum(t.new_tokens for t in turns), wall, tps, speedup, tau,
                   draft_per_step, draft_frac, verify_frac, hist,
                   histogram(turns, "accepted") or {}, ldlp_error(turns))


def summarize_all(results: dict[str, list[QuestionResult]],
                  tasks: list[str]) -> dict[str, dict[str, Summary]]:
    """``{method: {task | "overall": Summary}}``; speedups are against ``results["ar"]``."""
    base = results.get(BASELINE)
    out: dict[str, dict[str, Summary]] = {}
    for method, qs in results.items():
        per: dict[str, Summary] = {}
        for task in [*tasks, OVERALL]:
            sel = [q for q in qs if task == OVERALL or q.task == task]
            if not sel:
                continue
            ids = {q.qid for q in sel}
            base_sel = [q for q in base if q.qid in ids] if base is not None else None
            per[task] = summarize(sel, base_sel)
        out[method] = per
    return out
