"""The shipped head on the default model with a random LDLP: every adaptive chain emits ``ar``'s
tokens (fp32, 2 Spec-Bench prompts x 32 tokens)."""

import pytest
from ldlp_fixtures import spread_ldlp
from test_spec_eagle_default import pipe, spec_bench_ids  # noqa: F401  (fixture pipe)

from adaeagle_ext.spec.adaeagle import AdaEagle, AdaEagleDdd
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.strategy import make_strategy

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference(pipe):  # noqa: F811
    """2 prompts (writing, translation) and ar's 32-token answers."""
    prompts = spec_bench_ids(pipe, 1)[:2]
    eos = pipe._eos_ids()
    return [(p, generate_ids(pipe.model, [p], max_new_tokens=32, eos_ids=eos)[0][0])
            for p in prompts]


@pytest.mark.parametrize("method", ["ddd", "maxconf", "adaeagle", "adaeagle-ddd", "oracle"])
def test_adaptive_chains_match_ar_on_spec_bench(pipe, reference, method):  # noqa: F811
    ldlp = spread_ldlp(pipe.model, seed=0, k_max=6)
    if method == "adaeagle":
        strategy = AdaEagle(ldlp=ldlp)
    elif method == "adaeagle-ddd":
        strategy = AdaEagleDdd(ldlp=ldlp)
    else:
        strategy = make_strategy(method)
    eos = pipe._eos_ids()
    for prompt, want in reference:
        (got,), stats = generate_ids(pipe.model, [prompt], method=strategy, max_new_tokens=32,
                                     eos_ids=eos)
        assert got.token_ids == want.token_ids
        assert stats.mean_accepted > 1.0
