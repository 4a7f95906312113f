"""At T > 0 ``aded`` samples exactly the target's distribution (``verify_sampling``'s top-k rule).

Same structure as ``test_spec_eagle_sampling.py`` (the check of ``exact_sampling.py``): on a
6-token vocabulary the first three generated tokens of many requests are compared with the exact
target distribution. ADED's own verification rule (REST's: every root-to-leaf
path independently samples the target and the longest match wins) is not exact, and must fail
the same test.
"""

import numpy as np
import pytest
import torch
from eagle_fixtures import one_thread  # noqa: F401
from exact_sampling import (
    PARAMS,
    SAMPLES,
    VOCAB,
    assert_matches,
    chi_square,
    exact_joint,
    sample_counts,
)

from adaeagle_ext import ops
from adaeagle_ext.drafters.trigram import count_trigrams
from adaeagle_ext.spec.aded import Aded
from adaeagle_ext.spec.sampling import SamplingParams, target_probs
from adaeagle_ext.spec.strategy import Acceptance


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    return count_trigrams([rng.integers(0, VOCAB, size=30) for _ in range(30)], VOCAB)


def test_aded_matches_exact(sampling_model, table):
    big = Aded(table=table, max_nodes=ops.MAX_TREE_NODES)  # ADED's own trees
    _, _, stats = assert_matches(sampling_model, big, PARAMS)
    assert stats.mean_accepted > 1.2  # drafts were accepted, so the rule was exercised
    assert max(stats.draft_tokens) > 4  # trees, not chains: siblings were exercised


def test_aded_small_trees_with_filters(sampling_model, table):
    assert_matches(sampling_model, Aded(table=table, max_nodes=5),
                   SamplingParams(temperature=0.7, top_k=4, top_p=0.9, seed=3))


def test_aded_without_a_table(sampling_model):
    _, _, stats = assert_matches(sampling_model, Aded(table="none",
                                                      max_nodes=ops.MAX_TREE_NODES), PARAMS)
    assert stats.mean_accepted > 1.05


class AdedNucleusRule(Aded):
    """ADED's (REST's) sampling verification: each root-to-leaf path samples the target at
    each of its nodes independently and accepts while the sample equals the next draft; the
    path accepting most wins and its first unmatched sample is the bonus token."""

    def verify(self, state, tree, logits):
        p = target_probs(logits, state.sampling)
        ptr = tree.tree_indptr.tolist()
        width = self.max_tree_nodes
        batch = state.roots.numel()
        local = torch.full((batch, width), -1, dtype=torch.int32)
        n_acc = torch.zeros(batch, dtype=torch.int32)
        out = torch.full((batch, width), -1, dtype=torch.int64)
        for b in state.active.nonzero().flatten().tolist():
            lo, hi = ptr[b], ptr[b + 1]
            parents = tree.parents[lo:hi].tolist()
            tokens = tree.tokens[lo:hi].tolist()
            leaves = [i for i in range(hi - lo) if i not in set(parents)]
            best = None
            for leaf in leaves:
                path = [leaf]
                while path[-1] != 0:
                    path.append(parents[path[-1]])
                path.reverse()
                k = 0
                while True:
                    s = int(torch.multinomial(p[lo + path[k]], 1, generator=state.generators[b]))
                    if k + 1 < len(path) and s == tokens[path[k + 1]]:
                        k += 1
                        continue
                    break
                if best is None or k > best[0]:
                    best = (k, path[:k + 1], s)
            k, path, bonus = best
            local[b, :k + 1] = torch.tensor(path, dtype=torch.int32)
            n_acc[b] = k
            out[b, :k + 1] = torch.tensor([tokens[i] for i in path[1:]] + [bonus])
        return Acceptance(local, n_acc, out)


def test_adeds_own_rule_fails(sampling_model, table):
    joint = exact_joint(sampling_model, PARAMS)
    rule = AdedNucleusRule(table=table, max_nodes=ops.MAX_TREE_NODES)
    counts, _ = sample_counts(sampling_model, rule, PARAMS)
    stat, df = chi_square(counts, joint, SAMPLES)
    assert stat > df + 5 * (2 * df) ** 0.5, (stat, df)
