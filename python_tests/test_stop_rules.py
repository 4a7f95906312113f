"""The chain stop rules on hand-made draft levels (no model)."""

import math
from types import SimpleNamespace

import torch

from adaeagle_ext.spec.stop_rules import (
    CumulativeLogProb,
    LevelDraft,
    MaxConfidence,
    OracleMatch,
    PredictedLength,
    PredictedLengthOrLogProb,
    StopRule,
)


def level(n: int, requests: list[int], top: list[float], tokens=None, q=None) -> LevelDraft:
    """A level whose head distribution at row j is (top[j], rest spread over 3 tokens)."""
    rows = [[t, (1 - t) / 3, (1 - t) / 3, (1 - t) / 3] for t in top]
    logits = torch.tensor(rows).log()
    toks = torch.zeros(len(top), dtype=torch.int64) if tokens is None else torch.tensor(tokens)
    return LevelDraft(n, torch.tensor(requests), toks, logits, q)


def test_level_confidences_greedy_and_sampled():
    d = level(1, [0, 1], [0.5, 0.9])
    torch.testing.assert_close(d.token_logprob, torch.tensor([math.log(0.5), math.log(0.9)]))
    torch.testing.assert_close(d.top_prob, torch.tensor([0.5, 0.9]))
    q = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])
    s = LevelDraft(1, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.zeros(2, 4), q)
    torch.testing.assert_close(s.token_logprob, torch.tensor([math.log(0.3), math.log(0.25)]))
    torch.testing.assert_close(s.top_prob, torch.tensor([0.6, 0.25]))


def test_fixed_rule_keeps_everything():
    take, more = StopRule().after_level(level(3, [2], [0.01]))
    assert take.tolist() == [True] and more.tolist() == [True]
    assert StopRule().budgets([0, 3], [4, 1]) == [4, 1]


def test_cumulative_log_prob():
    rule = CumulativeLogProb(-1.0, batch=3)
    assert rule.budgets([0, 2], [5, 5]) == [5, 5]
    # request 0: 0.5 then 0.5 -> -0.69 (go on), -1.39 (stop); request 2: 0.9, 0.9 -> go on
    take, more = rule.after_level(level(1, [0, 2], [0.5, 0.9]))
    assert take.tolist() == [True, True] and more.tolist() == [True, True]
    take, more = rule.after_level(level(2, [0, 2], [0.5, 0.9]))
    assert take.tolist() == [True, True] and more.tolist() == [False, True]
    rule.budgets([0], [5])  # a new step starts request 0 from zero again
    assert rule.after_level(level(1, [0], [0.5]))[1].tolist() == [True]


def test_max_confidence_drops_the_unconfident_token():
    take, more = MaxConfidence(0.6).after_level(level(1, [0, 1], [0.5, 0.7]))
    assert take.tolist() == [False, True] and more.tolist() == [False, True]


def test_predicted_length_reads_the_predictor_each_step():
    pred = SimpleNamespace(lengths=[0, 3, 7])
    rule = PredictedLength(pred)
    assert rule.budgets([0, 1, 2], [4, 4, 4]) == [0, 3, 4]
    pred.lengths[1] = 1
    assert rule.budgets([1], [4]) == [1]


def test_predicted_length_or_log_prob():
    pred = SimpleNamespace(lengths=[2, 0])
    rule = PredictedLengthOrLogProb(pred, -0.6, batch=2)
    assert rule.budgets([0, 1], [6, 6]) == [6, 6]  # the cap only: the OR can go past it
    _, more = rule.after_level(level(1, [0, 1], [0.4, 0.4]))  # log 0.4 = -0.92 < -0.6
    assert more.tolist() == [True, False]  # request 0 is within its predicted length 2
    _, more = rule.after_level(level(2, [0], [0.99]))
    assert more.tolist() == [False]  # past the prediction, and -0.93 < -0.6
    rule.budgets([1], [6])
    _, more = rule.after_level(level(1, [1], [0.8]))
    assert more.tolist() == [True]  # -0.22 >= -0.6


def test_oracle_match():
    rule = OracleMatch()
    rule.expected = {0: [5, 6, 7], 1: []}
    assert rule.budgets([0, 1], [8, 8]) == [3, 0]
    take, more = rule.after_level(LevelDraft(2, torch.tensor([0]), torch.tensor([6]),
                                             torch.zeros(1, 8)))
    assert take.tolist() == [True] and more.tolist() == [True]
    take, _ = rule.after_level(LevelDraft(3, torch.tensor([0]), torch.tensor([1]),
                                          torch.zeros(1, 8)))
    assert take.tolist() == [False]
