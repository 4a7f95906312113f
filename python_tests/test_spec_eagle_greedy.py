"""EAGLE-head strategies at T = 0 emit exactly ``ar``'s tokens (fp32, tiny random models)."""

import pytest
import torch
from eagle_fixtures import (  # noqa: F401
    PROMPTS,
    check_same,
    check_stop_strings,
    one_thread,
    random_head,
    random_static_tree,
    tiny_target,
)

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids


def strategies(head, gen):
    return [
        EagleChain("1", head=head), EagleChain("3", head=head), EagleChain("7", head=head),
        EagleTree(head=head), EagleTree("small", head=head),
        EagleTree(head=head, tree=random_static_tree(gen, 12)),
        EagleTree(head=head,
                  tree=random_static_tree(gen, int(torch.randint(1, 40, (), generator=gen)))),
        Eagle2(head=head), Eagle2("top_k=3,depth=6,total_tokens=9", head=head),
        Eagle2("top_k=8,depth=3,total_tokens=40", head=head),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_every_strategy_matches_ar(seed):
    model = tiny_target(seed=seed)
    head = random_head(model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    accepted_more = False
    for strategy in strategies(head, gen):
        stats = check_same(model, strategy, PROMPTS, max_new_tokens=24)
        assert stats.mean_accepted >= 1.0
        accepted_more |= max(stats.accepted_per_step) >= 3
    assert accepted_more, "no step accepted 2+ drafts: the test would not exercise acceptance"


def test_kernel_attention_head_dim_matches_ar():
    """head_dim 64: target and head attention run the C++ tree_attention kernel."""
    model = tiny_target(seed=8, hidden_size=128, num_heads=2, num_kv_heads=1)
    head = random_head(model, seed=8)
    gen = torch.Generator().manual_seed(8)
    accepted = 0.0
    for strategy in strategies(head, gen)[1::2]:
        stats = check_same(model, strategy, PROMPTS, max_new_tokens=20)
        accepted = max(accepted, max(stats.accepted_per_step))
    assert accepted >= 3


def test_reduced_draft_vocabulary_matches_ar():
    model = tiny_target(vocab=101, seed=5)
    vocab = torch.tensor([0, 3, 4, 9, 17, 33, 50, 51, 77, 100])
    head = random_head(model, seed=2, draft_vocab=vocab)
    prompts = [[3, 4, 9, 17, 3, 4], [100, 50, 51]]
    for strategy in (EagleChain("4", head=head), EagleTree(head=head), Eagle2(head=head)):
        check_same(model, strategy, prompts, max_new_tokens=16)


@pytest.mark.parametrize("max_new", [1, 2, 3, 5])
def test_max_new_tokens_inside_a_draft(max_new):
    model = tiny_target(seed=1)
    head = random_head(model, seed=1)
    gen = torch.Generator().manual_seed(max_new)
    for strategy in strategies(head, gen)[1::2]:
        check_same(model, strategy, PROMPTS, max_new_tokens=max_new)


def test_eos_inside_drafts():
    model = tiny_target(seed=2)
    head = random_head(model, seed=2)
    ref, _ = generate_ids(model, PROMPTS, max_new_tokens=20)
    gen = torch.Generator().manual_seed(0)
    for eos in sorted({ref[0].token_ids[4], ref[3].token_ids[7]}):
        for strategy in strategies(head, gen)[::2]:
            check_same(model, strategy, PROMPTS, max_new_tokens=20, eos_ids=[eos])


def test_stop_strings_inside_drafts():
    model = tiny_target(seed=3)
    head = random_head(model, seed=3)
    check_stop_strings(model, strategies(head, torch.Generator().manual_seed(1))[1::3])


def test_near_the_cache_end():
    """The cache holds exactly what the call needs; drafts shrink instead of overflowing."""
    model = tiny_target(seed=4, max_pos=128)
    head = random_head(model, seed=4)
    prompts = [[i % 8 for i in range(60)], [1, 2]]
    gen = torch.Generator().manual_seed(2)
    for strategy in strategies(head, gen)[::2]:
        need = 60 + 40 + strategy.max_tree_nodes
        if need > 128:
            continue
        check_same(model, strategy, prompts, max_new_tokens=40, max_seq_len=need)


def test_batched_equals_single():
    model = tiny_target(seed=6)
    head = random_head(model, seed=6)
    for strategy in (EagleChain("3", head=head), EagleTree(head=head), Eagle2(head=head)):
        batched, _ = generate_ids(model, PROMPTS, method=strategy, max_new_tokens=15)
        for prompt, b in zip(PROMPTS, batched, strict=True):
            (alone,), _ = generate_ids(model, [prompt], method=strategy, max_new_tokens=15)
            assert b.token_ids == alone.token_ids


def test_stats_record_draft_and_verify():
    model = tiny_target(seed=7)
    head = random_head(model, seed=7)
    _, stats = generate_ids(model, PROMPTS, method=EagleChain("3", head=head),
                            max_new_tokens=12)
    assert stats.draft_s > 0 and stats.verify_s > 0
    assert len(stats.draft_tokens) == len(stats.accepted_per_step)
    assert max(stats.draft_tokens) == 3
    hist = stats.accepted_histogram()
    assert sum(hist.values()) == len(stats.accepted_per_step)
    assert all(1 <= k <= 4 for k in hist)


def test_unknown_tree_and_bad_specs_raise():
    with pytest.raises(ValueError, match="unknown static tree"):
        EagleTree("nope")
    with pytest.raises(ValueError, match="chain length"):
        EagleChain("0")
    with pytest.raises(ValueError, match="eagle2 spec"):
        Eagle2("width=3")
    with pytest.raises(ValueError, match="eagle2 depth must be an integer"):
        Eagle2("depth=2.5")
    e = Eagle2("top_k=3,depth=4,total_tokens=10")
    assert (e.top_k, e.depth, e.total_tokens) == (3, 4, 10)
    assert all(type(v) is int for v in (e.top_k, e.depth, e.total_tokens))
