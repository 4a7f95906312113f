"""``aded-conf``: ADED's trees cut by the tri-gram value of each edge. The cut itself on a
hand-built tree (literal results), greedy identity with ``ar`` on tiny fp32 models (thresholds
that keep everything, some and nothing), exact sampling at T > 0, options, and the default
model."""

import math

import numpy as np
import pytest
from aded_fixtures import own_output_table, random_table, run_on_default_model
from eagle_fixtures import PROMPTS, check_same, one_thread, tiny_target  # noqa: F401
from exact_sampling import PARAMS, VOCAB, assert_matches

from adaeagle_ext import ops
from adaeagle_ext.drafters.trigram import count_trigrams
from adaeagle_ext.spec.aded import Aded, AdedConf, prune_by_value
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.strategy import make_strategy

# root token 9 after token 4; node ids 1..5 as (token, parent id)
#          9
#        /   \
#     1:5     2:6
#      |       |
#     3:7     5:8
#      |
#     4:2
NODES = [(5, 0), (6, 0), (7, 1), (2, 3), (8, 2)]
VALUES = {(4, 9, 5): 0.5, (4, 9, 6): 0.1, (9, 5, 7): 0.4, (5, 7, 2): 0.2, (9, 6, 8): 0.9}


def value(t1, t2, t3):
    return VALUES.get((t1, t2, t3), 0.0)


def test_prune_by_value_golden():
    # 6 goes (0.1) and takes its child 8 (0.9) with it; 2 goes (0.2)
    assert prune_by_value(NODES, 9, 4, value, 0.3) == [(5, 0), (7, 1)]
    assert prune_by_value(NODES, 9, 4, value, 0.0) == NODES
    assert prune_by_value(NODES, 9, 4, value, 0.45) == [(5, 0)]
    assert prune_by_value(NODES, 9, 4, value, 0.6) == []
    # no token before the root: the first level has no tri-gram and is kept
    assert prune_by_value(NODES, 9, None, value, 0.3) == [(5, 0), (6, 0), (7, 1), (8, 2)]
    assert prune_by_value([], 9, 4, value, 0.3) == []


def draft_counts(strategy, model, prompts, **kw):
    stats = check_same(model, strategy, prompts, **kw)
    return stats, sum(d == 0 for d in stats.draft_tokens), sum(d > 0 for d in stats.draft_tokens)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_ar(seed):
    model = tiny_target(seed=seed)
    own, rand = own_output_table(model, seed), random_table(seed)
    skipped = drafted = 0
    for table in (own, rand):
        for max_nodes in (3, ops.MAX_TREE_NODES):
            for min_value in (0.05, 0.3, 0.6):
                strategy = AdedConf(table=table, max_nodes=max_nodes, min_value=min_value)
                stats, none, some = draft_counts(strategy, model, PROMPTS, max_new_tokens=24)
                assert max(stats.draft_tokens) <= max_nodes - 1
                skipped, drafted = skipped + none, drafted + some
    # both kinds of step happened: one-token steps (all drafts cut) and drafted ones
    assert skipped > 0 and drafted > 0


def test_a_threshold_above_every_value_is_ar():
    model = tiny_target(seed=1)
    strategy = AdedConf(table=own_output_table(model, 1), min_value=10.0)  # values are <= 3
    stats, none, some = draft_counts(strategy, model, PROMPTS, max_new_tokens=16)
    assert some == 0 and stats.mean_accepted == 1.0


def test_cut_trees_are_subtrees_of_adeds():
    """With min_value 0 the tree is ``aded``'s; with a threshold, a subtree of it."""
    model = tiny_target(seed=2)
    table = own_output_table(model, 2)
    full = check_same(model, Aded(table=table, max_nodes=6), PROMPTS, max_new_tokens=20)
    same = check_same(model, AdedConf(table=table, max_nodes=6, min_value=0.0), PROMPTS,
                      max_new_tokens=20)
    assert same.draft_tokens == full.draft_tokens
    cut = check_same(model, AdedConf(table=table, max_nodes=6, min_value=0.4), PROMPTS,
                     max_new_tokens=20)
    assert sum(cut.draft_tokens) / len(cut.draft_tokens) < sum(full.draft_tokens) / len(
        full.draft_tokens)


def test_eos_and_max_new_tokens_inside_drafts():
    model = tiny_target(seed=3)
    table = own_output_table(model, 3)
    ref, _ = generate_ids(model, PROMPTS, max_new_tokens=20)
    for eos in sorted({ref[0].token_ids[3], ref[2].token_ids[6]}):
        check_same(model, AdedConf(table=table, min_value=0.1), PROMPTS, max_new_tokens=20,
                   eos_ids=[eos])
    for max_new in (1, 2, 5):
        check_same(model, AdedConf(table=table, max_nodes=8, min_value=0.1), PROMPTS,
                   max_new_tokens=max_new)


def test_samples_exactly(sampling_model):
    rng = np.random.default_rng(0)
    table = count_trigrams([rng.integers(0, VOCAB, size=30) for _ in range(30)], VOCAB)
    strategy = AdedConf(table=table, max_nodes=ops.MAX_TREE_NODES, min_value=0.15)
    _, _, stats = assert_matches(sampling_model, strategy, PARAMS)
    assert stats.mean_accepted > 1.05  # drafts were accepted
    assert 0 in stats.draft_tokens and max(stats.draft_tokens) > 1  # and cut to every size


def test_options():
    s = make_strategy("aded-conf")
    assert (s.max_tree_nodes, s.min_value) == (3, 0.3)
    assert make_strategy("aded").min_value == 0.0
    s = make_strategy("aded-conf:min_value=0.5,max_nodes=4,table=none")
    assert (s.max_tree_nodes, s.min_value, s.table_arg) == (4, 0.5, "none")
    assert AdedConf(min_value=0.2, iterations=20).search["iterations"] == 20
    with pytest.raises(ValueError, match="min_value must be >= 0"):
        AdedConf(min_value=-0.1)
    with pytest.raises(ValueError, match="min_value must be >= 0"):
        AdedConf(min_value=math.nan)
    with pytest.raises(ValueError, match="min_value needs a number"):
        make_strategy("aded-conf:min_value=high")
    with pytest.raises(ValueError, match="unknown option"):
        AdedConf(threshold=0.3)


@pytest.mark.model
@pytest.mark.slow
def test_default_model_matches_ar():
    stats, same = run_on_default_model(AdedConf())
    assert same
    assert 0 in stats.draft_tokens and stats.mean_accepted > 1.0
