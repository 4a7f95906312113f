"""Spec-Bench arithmetic on a hand-made trace (literal expected numbers) and divergence finding."""

import pytest

from adaeagle_ext.bench.losslessness import find_divergence, first_difference
from adaeagle_ext.bench.metrics import OVERALL, QuestionResult, TurnResult, summarize_all


def turn(n, wall, steps=None, step_tokens=None, drafts=None, draft_s=None, verify_s=None):
    return TurnResult([1, 2], list(range(n)), wall, steps, step_tokens, drafts, draft_s, verify_s)


# ar: q1 (task A) 10 tokens / 2 s = 5 tok/s; q2 (task B, two turns) 12 tokens / 3 s = 4 tok/s.
AR = [QuestionResult("ar", "1", "A", [turn(10, 2.0, 9, 9)]),
      QuestionResult("ar", "2", "B", [turn(6, 1.0, 5, 5), turn(6, 2.0, 5, 5)])]
# m: q1 10 / 1 s = 10 tok/s; q2 12 / (0.5 + 1.5) s = 6 tok/s.
M = [QuestionResult("m", "1", "A", [turn(10, 1.0, 3, 9, [4, 4, 2], 0.2, 0.6)]),
     QuestionResult("m", "2", "B", [turn(6, 0.5, 2, 5, [3, 3], 0.1, 0.3),
                                    turn(6, 1.5, 5, 5, [0, 0, 1, 1, 1], 0.2, 0.9)])]


def test_spec_bench_arithmetic_on_a_hand_made_trace():
    s = summarize_all({"ar": AR, "m": M}, ["A", "B"])
    m, ar = s["m"], s["ar"]
    assert ar[OVERALL].tokens_per_s == pytest.approx(4.5)
    assert m["A"].tokens_per_s == pytest.approx(10.0)
    assert m["B"].tokens_per_s == pytest.approx(6.0)
    assert m["A"].speedup == pytest.approx(2.0)
    assert m["B"].speedup == pytest.approx(1.5)
    # overall: ratio of mean tok/s (8 / 4.5), not the mean of per-question ratios (1.75)
    assert m[OVERALL].speedup == pytest.approx(16 / 9)
    assert ar[OVERALL].speedup == pytest.approx(1.0)
    # tau pools all steps: A 9/3, B (5+5)/(2+5), overall 19/10
    assert m["A"].tau == pytest.approx(3.0)
    assert m["B"].tau == pytest.approx(10 / 7)
    assert m[OVERALL].tau == pytest.approx(1.9)
    assert ar[OVERALL].tau == pytest.approx(1.0)
    assert m[OVERALL].draft_hist == {0: 2, 1: 3, 2: 1, 3: 2, 4: 2}
    assert m[OVERALL].draft_per_step == pytest.approx(1.9)
    assert m["A"].draft_per_step == pytest.approx(10 / 3)
    assert m[OVERALL].draft_frac == pytest.approx(0.5 / 3.0)
    assert m[OVERALL].verify_frac == pytest.approx(1.8 / 3.0)
    assert m[OVERALL].new_tokens == 22 and m[OVERALL].questions == 2
    # unknown quantities stay unknown rather than becoming zeros
    assert ar[OVERALL].draft_per_step is None and ar[OVERALL].draft_frac is None
    assert ar[OVERALL].draft_hist == {}


def test_speedup_needs_the_same_questions():
    with pytest.raises(ValueError, match="same questions"):
        summarize_all({"ar": AR[:1], "m": M}, ["A", "B"])


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2, 3], [1, 2]) == 2
    assert first_difference([], [7]) == 0


def test_divergence_in_the_second_turn():
    ref = QuestionResult("ar", "9", "mt_bench", [TurnResult([1], [4, 5], 1.0),
                                                 TurnResult([1, 4, 5, 2], [6, 7, 8], 1.0)])
    got = QuestionResult("x", "9", "mt_bench", [TurnResult([1], [4, 5], 1.0),
                                                TurnResult([1, 4, 5, 2], [6, 7], 1.0)])
    d = find_divergence(ref, got)
    assert (d.turn, d.position, d.ar_token, d.method_token) == (1, 2, 8, None)
    assert find_divergence(ref, ref) is None
