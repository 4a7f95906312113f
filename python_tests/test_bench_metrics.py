"""Spec-Bench arithmetic and the LDLP's error on hand-made traces (literal expected numbers),
and divergence finding."""

import pytest

from adaeagle_ext.bench.losslessness import find_divergence, first_difference
from adaeagle_ext.bench.metrics import OVERALL, QuestionResult, TurnResult, summarize_all


def turn(n, wall, steps=None, step_tokens=None, drafts=None, draft_s=None, verify_s=None,
         accepted=None, predicted=None):
    return TurnResult([1, 2], list(range(n)), wall, steps, step_tokens, drafts, draft_s, verify_s,
                      accepted, predicted)


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


def ldlp_turn(accepted, predicted):
    return turn(1 + sum(accepted), 1.0, len(accepted), sum(accepted), list(predicted), 0.1, 0.5,
                accepted, predicted)


# An LDLP method (drafts may run past the prediction, as in adaeagle-ddd). Per step, predicted
# minus accepted drafts (accepted tokens - 1): q1 [2-2, 0-0, 3-1] = [0, 0, 2];
# q2 [1-0, 1-3] and [0-1] = [1, -2, -1].
L = [QuestionResult("l", "1", "A", [ldlp_turn([3, 1, 2], [2, 0, 3])]),
     QuestionResult("l", "2", "B", [ldlp_turn([1, 4], [1, 1]), ldlp_turn([2], [0])])]


def test_ldlp_error_and_histograms_on_a_hand_made_trace():
    s = summarize_all({"ar": AR, "m": M, "l": L}, ["A", "B"])
    o, a, b = s["l"][OVERALL].ldlp, s["l"]["A"].ldlp, s["l"]["B"].ldlp
    assert o["steps"] == 6
    assert o["mae"] == pytest.approx(1.0) and o["bias"] == pytest.approx(0.0)
    assert (o["under"], o["exact"], o["over"]) == pytest.approx((2 / 6, 2 / 6, 2 / 6))
    assert o["mean_predicted"] == pytest.approx(7 / 6)
    assert o["mean_accepted_drafts"] == pytest.approx(7 / 6)
    assert o["predicted_hist"] == {0: 2, 1: 2, 2: 1, 3: 1}
    assert (a["steps"], b["steps"]) == (3, 3)
    assert a["mae"] == pytest.approx(2 / 3) and a["bias"] == pytest.approx(2 / 3)
    assert (a["under"], a["exact"], a["over"]) == pytest.approx((0, 2 / 3, 1 / 3))
    assert b["mae"] == pytest.approx(4 / 3) and b["bias"] == pytest.approx(-2 / 3)
    assert (b["under"], b["exact"], b["over"]) == pytest.approx((2 / 3, 0, 1 / 3))
    assert b["predicted_hist"] == {0: 1, 1: 2}
    assert s["l"][OVERALL].accept_hist == {1: 2, 2: 2, 3: 1, 4: 1}
    assert s["l"]["A"].accept_hist == {1: 1, 2: 1, 3: 1}
    assert s["l"][OVERALL].tau == pytest.approx(13 / 6)
    # methods without predictions or per-step lists have none (not zeros)
    assert s["m"][OVERALL].ldlp is None and s["ar"][OVERALL].ldlp is None
    assert s["m"][OVERALL].accept_hist == {}
    d = s["l"][OVERALL].as_dict()
    assert d["accept_hist"] == {"1": 2, "2": 2, "3": 1, "4": 1}
    assert d["ldlp"]["predicted_hist"] == {"0": 2, "1": 2, "2": 1, "3": 1}
    assert s["l"][OVERALL].ldlp["predicted_hist"] == {0: 2, 1: 2, 2: 1, 3: 1}  # not mutated


def test_ldlp_error_needs_aligned_lists():
    bad = [QuestionResult("l", "1", "A", [turn(4, 1.0, 2, 3, [1, 1], accepted=[2, 1],
                                              predicted=[1])])]
    with pytest.raises(ValueError, match="1 predictions for 2 steps"):
        summarize_all({"l": bad}, ["A"])


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
