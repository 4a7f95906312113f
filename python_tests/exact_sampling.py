"""The exact-distribution check of the T > 0 tests.

On a VOCAB-token vocabulary the first TOKENS generated tokens of SAMPLES requests (one batch,
each request with its own seed) are counted and compared, by a chi-square test, with the exact
target distribution computed from the model. The 6-token target and its random head are the
``sampling_model`` and ``sampling_head`` fixtures (conftest.py).
"""

import itertools

import torch

from adaeagle_ext.models.tree_inputs import chain_inputs
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams, target_probs

VOCAB = 6
PROMPT = [1, 4, 2]
SAMPLES = 1500
TOKENS = 3


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
