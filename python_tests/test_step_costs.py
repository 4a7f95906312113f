"""Step costs: interpolation, the draft-size rule on hand-made costs, and the measurement."""

import math

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.spec.step_costs import (
    StepCosts,
    best_draft_size,
    chain_gains,
    expected_rates,
    gains_from_length,
    measure_step_costs,
    step_costs,
)

# verify: 100 ms for 1-2 tokens, 110 ms for 4, 150 ms for 8; a draft step 10 ms.
COSTS = StepCosts((1, 2, 4, 8), (0.100, 0.100, 0.110, 0.150), (1,), (0.010,))


def test_interpolation():
    assert COSTS.verify_s(1) == pytest.approx(0.100)
    assert COSTS.verify_s(3) == pytest.approx(0.105)
    assert COSTS.verify_s(6) == pytest.approx(0.130)
    assert COSTS.verify_s(9) == pytest.approx(0.160)  # the last slope, 10 ms a token
    assert COSTS.verify_s(0.5) == pytest.approx(0.100)
    assert COSTS.draft_s(5) == pytest.approx(0.010)


def test_costs_never_fall_with_size():
    noisy = StepCosts((1, 2, 4), (0.10, 0.09, 0.12))
    assert noisy.verify_s(2) == pytest.approx(0.10)
    assert noisy.verify_s(3) == pytest.approx(0.11)
    assert noisy.verify_times == (0.10, 0.09, 0.12)  # the medians themselves are kept


def test_chain_of_half_acceptance():
    # rates: n=0 10.0, n=1 1.5/0.11 = 13.6, n=2 1.75/0.125 = 14.0, n=3 1.875/0.14 = 13.4
    gains = gains_from_length(1.0, 6)
    assert gains[:3] == pytest.approx([0.5, 0.25, 0.125])
    assert best_draft_size(gains, COSTS, per_node_s=COSTS.draft_s(1)) == 2


def test_chain_of_longer_predicted_length():
    # a = 0.75: n=2 2.3125/0.125 = 18.5, n=3 2.734/0.14 = 19.53, n=4 3.051/0.16 = 19.07
    gains = gains_from_length(3.0, 6)
    assert best_draft_size(gains, COSTS, per_node_s=0.010) == 3


def test_tree_budget():
    gains = [0.9, 0.3, 0.2, 0.05]
    rates = expected_rates(gains, COSTS, fixed_s=0.02)
    want = [1 / 0.12, 1.9 / 0.12, 2.2 / 0.125, 2.4 / 0.13, 2.45 / 0.14]
    assert rates == pytest.approx(want)
    assert best_draft_size(gains, COSTS, fixed_s=0.02) == 3
    assert best_draft_size(gains, COSTS, fixed_s=0.02, min_size=4) == 4
    assert best_draft_size(gains, COSTS, fixed_s=0.02, max_size=2) == 2
    assert best_draft_size(gains, COSTS, fixed_s=0.02, max_size=10) == 3


def test_free_and_ruinous_verification():
    flat = StepCosts((1,), (0.1,))
    assert best_draft_size([0.3, 0.2, 0.01], flat) == 3
    assert best_draft_size([0.3, 0.2, 0.01], flat, per_node_s=1.0) == 0
    assert best_draft_size([0.0, 0.0], flat) == 0  # ties go to the smaller draft


def test_chain_gains():
    assert chain_gains([0.9, 0.5, 1.0]) == pytest.approx([0.9, 0.45, 0.45])
    assert gains_from_length(0.0, 3) == [0.0, 0.0, 0.0]
    assert sum(gains_from_length(2.0, 400)) == pytest.approx(2.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="sizes but"):
        StepCosts((1, 2), (0.1,))
    with pytest.raises(ValueError, match="strictly increasing"):
        StepCosts((2, 1), (0.1, 0.2))
    with pytest.raises(ValueError, match="finite and >= 0"):
        StepCosts((1, 2), (0.1, math.nan))
    with pytest.raises(ValueError, match="at least one verify size"):
        StepCosts((), ())
    with pytest.raises(ValueError, match="no draft timings"):
        StepCosts((1,), (0.1,)).draft_s(1)
    with pytest.raises(ValueError, match="gains must be finite"):
        best_draft_size([0.5, -1.0], COSTS)
    with pytest.raises(ValueError, match="min_size"):
        best_draft_size([0.5], COSTS, min_size=2)
    with pytest.raises(ValueError, match="fixed_s"):
        expected_rates([0.5], COSTS, fixed_s=-1.0)
    with pytest.raises(ValueError, match=r"acceptance\[1\]"):
        chain_gains([0.5, 1.5])
    with pytest.raises(ValueError, match="length must be"):
        gains_from_length(-1.0, 3)
    model = tiny_target(seed=0)
    with pytest.raises(ValueError, match="reps"):
        measure_step_costs(model, reps=0)
    with pytest.raises(ValueError, match="verify_sizes"):
        measure_step_costs(model, verify_sizes=(1, 65))


def test_measurement_on_a_tiny_model():
    model = tiny_target(seed=1)
    head = random_head(model, seed=1)
    costs = measure_step_costs(model, head, reps=2, cache_len=100)
    assert costs.verify_sizes == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert costs.draft_sizes == (1, 2, 4, 8, 16, 32)
    assert all(t > 0 for t in costs.verify_times + costs.draft_times)
    assert 1 <= costs.reps <= 2 and costs.cache_len == 100
    assert "| 64 |" in costs.table()
    quick = measure_step_costs(model, reps=5, budget_s=0.0, verify_sizes=(1, 8))
    assert quick.reps == 1 and quick.draft_sizes == ()  # no head: verify costs only


def test_cached_per_model_head_and_threads():
    model = tiny_target(seed=2)
    head = random_head(model, seed=2)
    first = step_costs(model, head)
    assert step_costs(model, head) is first
    assert step_costs(tiny_target(seed=2), head) is not first
    assert step_costs(model, random_head(model, seed=3)) is not first
    torch.set_num_threads(2)  # the fixture restores the count
    assert step_costs(model, head) is not first
