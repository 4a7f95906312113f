"""The shipped head on the default model with a random LDLP: every adaptive chain emits ``ar``'s
tokens (fp32, 2 Spec-Bench prompts x 32 tokens)."""

import pytest
from ldlp_fixtures import spread_ldlp
from spec_bench_fixtures import ar_answers, assert_answers_like_ar, spec_bench_ids

from adaeagle_ext.spec.adaeagle import AdaEagle, AdaEagleDdd
from adaeagle_ext.spec.strategy import make_strategy

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(default_pipe):
    """2 prompts (writing, translation) and ar's 32-token answers."""
    return ar_answers(default_pipe, spec_bench_ids(default_pipe, 1)[:2], 32)


@pytest.mark.parametrize("method", ["ddd", "maxconf", "adaeagle", "adaeagle-ddd", "oracle"])
def test_adaptive_chains_match_ar_on_spec_bench(default_pipe, reference, method):
    ldlp = spread_ldlp(default_pipe.model, seed=0, k_max=6)
    if method == "adaeagle":
        strategy = AdaEagle(ldlp=ldlp)
    elif method == "adaeagle-ddd":
        strategy = AdaEagleDdd(ldlp=ldlp)
    else:
        strategy = make_strategy(method)
    assert_answers_like_ar(default_pipe, reference, strategy, 32)
