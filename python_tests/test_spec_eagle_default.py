"""The shipped head on the default model: EAGLE strategies emit ``ar``'s tokens (fp32)."""

import pytest
from spec_bench_fixtures import ar_answers, assert_answers_like_ar, spec_bench_ids

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(default_pipe):
    """12 prompts (2 per task) and ar's 128-token answers."""
    return ar_answers(default_pipe, spec_bench_ids(default_pipe, 2), 128)


@pytest.mark.parametrize("method", ["chain:3", "eagle", "eagle2"])
def test_shipped_head_matches_ar_on_spec_bench(default_pipe, reference, method):
    assert_answers_like_ar(default_pipe, reference, method, 128)
