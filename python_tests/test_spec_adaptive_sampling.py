"""At T > 0 the adaptive chains sample exactly the target's distribution.

Same protocol as ``test_spec_eagle_sampling.py`` (``exact_sampling.py``): the first three
tokens of many requests on a 6-token vocabulary against the exact joint distribution, by a
chi-square test. A stop rule that peeks at the sampled token to decide whether to keep it is
biased, and must fail the same test.
"""

import pytest
from eagle_fixtures import one_thread  # noqa: F401
from exact_sampling import PARAMS, SAMPLES, assert_matches, chi_square, exact_joint, sample_counts
from ldlp_fixtures import spread_ldlp

from adaeagle_ext.spec.adaeagle import AdaEagle, AdaEagleDdd
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.stop_rules import MaxConfidence
from adaeagle_ext.spec.threshold_chains import DddChain, MaxConfChain


@pytest.mark.parametrize("make", [
    lambda m, h: AdaEagle(head=h, ldlp=spread_ldlp(m, seed=4, k_max=4)),
    lambda m, h: AdaEagleDdd("-0.8", head=h, ldlp=spread_ldlp(m, seed=5, k_max=3)),
    lambda m, h: DddChain("-1.2,k_max=5", head=h),
    lambda m, h: MaxConfChain("0.45,k_max=5", head=h),
], ids=["adaeagle", "adaeagle-ddd", "ddd", "maxconf"])
def test_adaptive_chain_matches_exact(sampling_model, sampling_head, make):
    strategy = make(sampling_model, sampling_head)
    _, _, stats = assert_matches(sampling_model, strategy, PARAMS)
    assert stats.mean_accepted > 1.2  # drafts were accepted, so the rule was exercised
    lengths = set(stats.draft_tokens)
    assert len(lengths) >= 3, lengths  # the rule varied the length from step to step


def test_adaeagle_with_top_p(sampling_model, sampling_head):
    strategy = AdaEagle(head=sampling_head, ldlp=spread_ldlp(sampling_model, seed=6, k_max=4))
    assert_matches(sampling_model, strategy, SamplingParams(temperature=0.8, top_p=0.9, seed=5))


class KeepsConfidentTokens(MaxConfidence):
    """Broken on purpose: keeps a drafted token only when its own probability is high, so the
    kept tokens are not distributed as the q rows that verification assumes."""

    def after_level(self, draft):
        ok = draft.token_logprob.exp() >= self.threshold
        return ok, ok


class PeekingChain(MaxConfChain):
    def setup(self, model, batch):
        super().setup(model, batch)
        self.rule = KeepsConfidentTokens(self.threshold)


def test_a_rule_that_peeks_at_the_token_fails(sampling_model, sampling_head):
    joint = exact_joint(sampling_model, PARAMS)
    counts, stats = sample_counts(sampling_model, PeekingChain("0.5,k_max=4", head=sampling_head),
                                  PARAMS)
    assert stats.mean_accepted > 1.1  # kept drafts were accepted: the bias reached the output
    stat, df = chi_square(counts, joint, SAMPLES)
    assert stat > df + 5 * (2 * df) ** 0.5, (stat, df)
