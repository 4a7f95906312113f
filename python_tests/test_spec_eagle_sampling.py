"""At T > 0 the EAGLE strategies sample exactly the target's distribution.

The first three generated tokens of many requests on a 6-token vocabulary against the exact
target distribution, by a chi-square test (``exact_sampling.py``). A deliberately broken
acceptance rule must fail the same test.
"""

import pytest
import torch
from eagle_fixtures import one_thread  # noqa: F401
from exact_sampling import PARAMS, SAMPLES, assert_matches, chi_square, exact_joint, sample_counts

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.sampling import SamplingParams


def test_ar_matches_exact(sampling_model):
    assert_matches(sampling_model, "ar", PARAMS)


@pytest.mark.parametrize("make", [
    lambda h: EagleChain("3", head=h),
    lambda h: EagleTree("small", head=h),
    lambda h: Eagle2("top_k=3,depth=3,total_tokens=10", head=h),
], ids=["chain3", "eagle-small", "eagle2"])
def test_strategy_matches_exact(sampling_model, sampling_head, make):
    _, _, stats = assert_matches(sampling_model, make(sampling_head), PARAMS)
    assert stats.mean_accepted > 1.2  # drafts were accepted, so the rule was exercised


def test_eagle_tree_with_top_k_filter(sampling_model, sampling_head):
    assert_matches(sampling_model, EagleTree(head=sampling_head),
                   SamplingParams(temperature=0.7, top_k=4, seed=3))


class WrongProposalRows(EagleChain):
    """Broken on purpose: drafts sampled from the sampling_head, verified against uniform q rows."""

    def propose(self, state):
        tree = super().propose(state)
        self.draft_q = torch.full_like(self.draft_q, 1.0 / self.draft_q.shape[1])
        return tree


def test_a_broken_rule_fails(sampling_model, sampling_head):
    joint = exact_joint(sampling_model, PARAMS)
    counts, _ = sample_counts(sampling_model, WrongProposalRows("3", head=sampling_head), PARAMS)
    stat, df = chi_square(counts, joint, SAMPLES)
    assert stat > df + 5 * (2 * df) ** 0.5, (stat, df)
