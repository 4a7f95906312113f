"""At T > 0 the EAGLE strategies sample exactly the target's distribution.

On a 6-token vocabulary the first three generated tokens of many requests (one batch, each
request with its own seed) are compared with the exact target distribution, computed from the
model, by a chi-square test. A deliberately broken acceptance rule must fail the same test.
"""

import itertools

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.models.tree_inputs import chain_inputs
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams, target_probs

VOCAB = 6
PROMPT = [1, 4, 2]
SAMPLES = 1500
TOKENS = 3


@pytest.fixture(scope="module")
def model():
    return tiny_target(vocab=VOCAB, seed=9)


@pytest.fixture(scope="module")
def head(model):
    return random_head(model, seed=3)


def next_probs(model, seqs, params):
    """[len(seqs), V] target distributions after each token sequence."""
    out = []
    for s in seqs:
        cache = model.new_cache(1, len(s))
        pos, indptr, bits = chain_inputs(torch.tensor([len(s)]), torch.zeros(1, dtype=torch.int32))
        logits, _ = model(torch.tensor(s), pos, indptr, bits, torch.zeros(1, dtype=torch.int32),
                          cache, logit_rows=torch.tensor([len(s) - 1]))
        out.append(target_probs(logits, params)[0])
    return torch.stack(out)


def exact_joint(model, params) -> dict[tuple, float]:
    """P(first TOKENS tokens) under the target."""
    joint = {(): 1.0}
    for _ in range(TOKENS):
        keys = list(joint)
        probs = next_probs(model, [PROMPT + list(k) for k in keys], params)
        joint = {k + (v,): joint[k] * float(probs[i, v])
                 for i, k in enumerate(keys) for v in range(VOCAB)}
    return joint


def chi_square(counts: dict[tuple, int], joint: dict[tuple, float], n: int):
    """(statistic, degrees of freedom); cells expecting < 5 are pooled."""
    stat, df = 0.0, -1
    pool_obs = pool_exp = 0.0
    for k in itertools.product(range(VOCAB), repeat=TOKENS):
        e = joint.get(k, 0.0) * n
        o = counts.get(k, 0)
        if e < 5:
            pool_obs += o
            pool_exp += e
            continue
        stat += (o - e) ** 2 / e
        df += 1
    if pool_exp > 0:
        stat += (pool_obs - pool_exp) ** 2 / pool_exp
        df += 1
    return stat, df


def sample_counts(model, method, params):
    outs, stats = generate_ids(model, [PROMPT] * SAMPLES, method=method, max_new_tokens=6,
                               sampling=params)
    counts: dict[tuple, int] = {}
    for o in outs:
        k = tuple(o.token_ids[:TOKENS])
        counts[k] = counts.get(k, 0) + 1
    return counts, stats


def assert_matches(model, method, params):
    joint = exact_joint(model, params)
    counts, stats = sample_counts(model, method, params)
    stat, df = chi_square(counts, joint, SAMPLES)
    # ~5 standard deviations above the mean of a chi-square with df degrees of freedom
    assert stat < df + 5 * (2 * df) ** 0.5, (stat, df)
    return stat, df, stats


PARAMS = SamplingParams(temperature=1.0, seed=7)


def test_ar_matches_exact(model):
    assert_matches(model, "ar", PARAMS)


@pytest.mark.parametrize("make", [
    lambda h: EagleChain("3", head=h),
    lambda h: EagleTree("small", head=h),
    lambda h: Eagle2("top_k=3,depth=3,total_tokens=10", head=h),
], ids=["chain3", "eagle-small", "eagle2"])
def test_strategy_matches_exact(model, head, make):
    _, _, stats = assert_matches(model, make(head), PARAMS)
    assert stats.mean_accepted > 1.2  # drafts were accepted, so the rule was exercised


def test_eagle_tree_with_top_k_filter(model, head):
    assert_matches(model, EagleTree(head=head), SamplingParams(temperature=0.7, top_k=4, seed=3))


class WrongProposalRows(EagleChain):
    """Broken on purpose: drafts sampled from the head, verified against uniform q rows."""

    def propose(self, state):
        tree = super().propose(state)
        self.draft_q = torch.full_like(self.draft_q, 1.0 / self.draft_q.shape[1])
        return tree


def test_a_broken_rule_fails(model, head):
    joint = exact_joint(model, PARAMS)
    counts, _ = sample_counts(model, WrongProposalRows("3", head=head), PARAMS)
    stat, df = chi_square(counts, joint, SAMPLES)
    assert stat > df + 5 * (2 * df) ** 0.5, (stat, df)
