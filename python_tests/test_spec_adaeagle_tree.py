"""``adaeagle-tree``: LDLP-set depth, cost-chosen budget; lossless at T = 0 and T > 0.

Tiny fp32 targets with random EAGLE heads and random LDLPs whose predictions spread over
0..k_max (so k = 0 steps, deep trees and everything between occur).
"""

import pytest
import torch
from eagle_fixtures import PROMPTS, check_same, one_thread, random_head, tiny_target  # noqa: F401
from exact_sampling import PARAMS, chi_square, exact_joint, sample_counts
from ldlp_fixtures import random_ldlp

from adaeagle_ext import ops
from adaeagle_ext.drafters.ldlp import LDLP
from adaeagle_ext.spec.adaeagle_tree import AdaEagleTree
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.step_costs import StepCosts, step_costs
from adaeagle_ext.spec.strategy import make_strategy

# Hand-made costs (seconds): verifying is free / ruinous / CPU-like.
FLAT = StepCosts((1, 64), (0.01, 0.01), (1, 64), (0.0, 0.0))
STEEP = StepCosts((1, 2, 64), (0.01, 1.0, 100.0), (1, 64), (0.001, 0.001))
CPU_LIKE = StepCosts((1, 4, 8, 16, 64), (0.010, 0.011, 0.014, 0.020, 0.060),
                     (1, 8, 64), (0.002, 0.003, 0.010))


class Recording(AdaEagleTree):
    """Logs (predicted k, depth cap from max_new_tokens, tree size, tree depth) per request,
    and (candidate values, chosen budget) per budget decision."""

    def setup(self, model, batch):
        super().setup(model, batch)
        self.log: list[tuple[int, int, int, int]] = []
        self.budgets: list[tuple[list[float], int]] = []

    def budget(self, values, depth):
        n = super().budget(values, depth)
        self.budgets.append((values, n))
        return n

    def propose(self, state):
        ks = list(self.predictor.lengths)
        tree = super().propose(state)
        ptr = tree.tree_indptr.tolist()
        parents = tree.parents.tolist()
        for b in state.active.nonzero().flatten().tolist():
            depth = [0]
            for j in range(ptr[b] + 1, ptr[b + 1]):
                depth.append(depth[parents[j]] + 1)
            cap = int(state.remaining[b]) - 1
            self.log.append((ks[b], cap, ptr[b + 1] - ptr[b], max(depth)))
        return tree


@pytest.mark.parametrize("seed", range(8))
def test_matches_ar_and_follows_the_rule(seed):
    model = tiny_target(seed=seed)
    head = random_head(model, seed=seed)
    ldlp = random_ldlp(model, k_max=4 + seed % 3, seed=seed)
    top_k = 2 + seed % 3
    for costs in (FLAT, STEEP, CPU_LIKE):
        s = Recording(head=head, ldlp=ldlp, top_k=top_k, costs=costs,
                      total_tokens=24 if seed % 2 else 64)
        stats = check_same(model, s, PROMPTS, max_new_tokens=24)
        ks = {k for k, *_ in s.log}
        assert 0 in ks and max(ks) >= 3, ks  # the LDLP's predictions spread
        for k, cap, size, depth in s.log:
            want_depth = max(0, min(k, cap))
            assert depth <= want_depth
            assert (size == 1) == (want_depth == 0)
            if costs is STEEP:  # nothing pays: one node whenever k > 0
                assert size == min(2, 1 + want_depth)
        drafted = [(k, cap) for k, cap, *_ in s.log if min(k, cap) > 0]
        assert len(s.budgets) == len(drafted)
        for (k, cap), (values, n) in zip(drafted, s.budgets, strict=True):
            # the whole expansion to depth min(k, cap) is offered, best first
            assert len(values) == sum(top_k ** min(d, 2) for d in range(1, min(k, cap) + 1))
            assert values == sorted(values, reverse=True) and 1 <= n < s.total_tokens
            if costs is FLAT:  # every candidate that moves the float sum pays, up to the cap
                assert n == s.total_tokens - 1 or all(v < 1e-12 for v in values[n:])
                assert all(v > 0 for v in values[:n])
        if costs is FLAT:
            assert max(stats.accepted_per_step) >= 2  # drafts were accepted


def test_measured_costs_are_measured_once():
    model = tiny_target(seed=11)
    head = random_head(model, seed=11)
    ldlp = random_ldlp(model, k_max=5, seed=11)
    s = AdaEagleTree(head=head, ldlp=ldlp)
    check_same(model, s, PROMPTS, max_new_tokens=16)
    assert s.costs is step_costs(model, s.head)  # from the per-process cache
    assert s.costs.reps >= 1 and len(s.costs.verify_sizes) == 9
    check_same(model, AdaEagleTree(head=head, ldlp=ldlp), PROMPTS[:2], max_new_tokens=8)


@pytest.mark.parametrize("shift", [-100.0, 100.0], ids=["k=0", "k=k_max"])
def test_constant_predictions(shift):
    model = tiny_target(seed=3)
    head = random_head(model, seed=3)
    ldlp = random_ldlp(model, k_max=6, seed=3, shift=shift)
    s = Recording(head=head, ldlp=ldlp, top_k=3, costs=FLAT)
    stats = check_same(model, s, PROMPTS, max_new_tokens=20)
    if shift < 0:
        assert set(stats.draft_tokens) == {0} and stats.mean_accepted == 1.0
    else:
        assert all(k == 6 for k, *_ in s.log)
        assert max(d for *_, d in s.log) == 6
        assert max(stats.accepted_per_step) >= 3


@pytest.mark.parametrize("max_new", [1, 2, 3, 5])
def test_max_new_tokens_inside_a_draft(max_new):
    model = tiny_target(seed=1)
    head = random_head(model, seed=1)
    for shift in (None, 100.0):
        ldlp = random_ldlp(model, k_max=5, seed=max_new, shift=shift)
        check_same(model, AdaEagleTree(head=head, ldlp=ldlp, top_k=3, costs=FLAT), PROMPTS,
                   max_new_tokens=max_new)


def test_eos_inside_drafts():
    model = tiny_target(seed=2)
    head = random_head(model, seed=2)
    ldlp = random_ldlp(model, k_max=6, seed=2)
    ref, _ = generate_ids(model, PROMPTS, max_new_tokens=20)
    for eos in sorted({ref[0].token_ids[4], ref[3].token_ids[7]}):
        for costs in (FLAT, CPU_LIKE):
            s = AdaEagleTree(head=head, ldlp=ldlp, top_k=3, costs=costs)
            check_same(model, s, PROMPTS, max_new_tokens=20, eos_ids=[eos])


def test_batched_equals_single():
    model = tiny_target(seed=6)
    head = random_head(model, seed=6)
    ldlp = random_ldlp(model, k_max=5, seed=6)
    s = AdaEagleTree(head=head, ldlp=ldlp, top_k=3, costs=CPU_LIKE)
    batched, _ = generate_ids(model, PROMPTS, method=s, max_new_tokens=15)
    for prompt, b in zip(PROMPTS, batched, strict=True):
        (alone,), _ = generate_ids(model, [prompt], method=s, max_new_tokens=15)
        assert b.token_ids == alone.token_ids


def test_ldlp_from_a_file(tmp_path):
    model = tiny_target(seed=4)
    head = random_head(model, seed=4)
    module, k_max = random_ldlp(model, k_max=5, seed=4)
    path = tmp_path / "ldlp.safetensors"
    module.save(path, k_max=k_max)
    check_same(model, AdaEagleTree(head=head, ldlp=str(path), costs=CPU_LIKE), PROMPTS,
               max_new_tokens=12)


# --- sampling ------------------------------------------------------------------------------


def sampling_strategy(model, cls=AdaEagleTree):
    head = random_head(model, seed=3)
    ldlp = random_ldlp(model, k_max=3, seed=5)
    return cls(head=head, ldlp=ldlp, top_k=3, costs=FLAT)


def chi_square_of(model, strategy):
    joint = exact_joint(model, PARAMS)
    counts, stats = sample_counts(model, strategy, PARAMS)
    stat, df = chi_square(counts, joint, sum(counts.values()))
    return stat, df, stats


def test_sampling_matches_the_target(sampling_model):
    stat, df, stats = chi_square_of(sampling_model, sampling_strategy(sampling_model))
    assert stat < df + 5 * (2 * df) ** 0.5, (stat, df)
    assert stats.mean_accepted > 1.2  # drafts were accepted, so the rule was exercised
    assert 0 in stats.draft_tokens  # and k = 0 steps happened


class UniformProposalRule(AdaEagleTree):
    """Broken on purpose: deterministic top-k drafts verified as if sampled from uniform q."""

    sampling_mode = ops.VERIFY_TREE_RECURSIVE

    def propose(self, state):
        tree = super().propose(state)
        self.draft_q = torch.full((tree.tokens.numel(), self.vocab_size), 1.0 / self.vocab_size)
        return tree


def test_a_broken_rule_fails(sampling_model):
    stat, df, _ = chi_square_of(sampling_model,
                                sampling_strategy(sampling_model, UniformProposalRule))
    assert stat > df + 5 * (2 * df) ** 0.5, (stat, df)


# --- bad inputs ----------------------------------------------------------------------------


def test_bad_options_raise():
    with pytest.raises(ValueError, match="adaeagle-tree spec"):
        AdaEagleTree("depth=3")
    with pytest.raises(ValueError, match="adaeagle-tree top_k must be a number"):
        AdaEagleTree("top_k=x")
    with pytest.raises(ValueError, match="adaeagle-tree total_tokens must be an integer"):
        AdaEagleTree("total_tokens=9.5")
    with pytest.raises(ValueError, match="given twice"):
        AdaEagleTree("top_k=2,top_k=3")
    with pytest.raises(ValueError, match="top_k must be in"):
        AdaEagleTree(top_k=0)
    with pytest.raises(ValueError, match="total_tokens must be in"):
        AdaEagleTree(total_tokens=65)
    with pytest.raises(ValueError, match="costs must be"):
        AdaEagleTree(costs={"verify": 1.0})
    with pytest.raises(ValueError, match="costs must be"):
        AdaEagleTree(costs=StepCosts((1,), (0.01,)))  # no draft timings


def test_missing_or_foreign_ldlp_raises(tmp_path):
    model = tiny_target(seed=5)
    head = random_head(model, seed=5)
    with pytest.raises(ValueError, match="no LDLP ships"):
        generate_ids(model, [[1, 2]], method=AdaEagleTree(head=head, costs=FLAT))
    with pytest.raises(FileNotFoundError, match="no such file"):
        generate_ids(model, [[1, 2]],
                     method=AdaEagleTree(head=head, ldlp=tmp_path / "nope", costs=FLAT))
    path = tmp_path / "other.safetensors"
    LDLP(model.config.hidden_size + 8, width=8).save(path, k_max=4)
    with pytest.raises(ValueError, match="hidden size"):
        generate_ids(model, [[1, 2]], method=AdaEagleTree(head=head, ldlp=path, costs=FLAT))


def test_registered_by_name():
    s = make_strategy("adaeagle-tree:top_k=2,total_tokens=10")
    assert isinstance(s, AdaEagleTree) and (s.top_k, s.total_tokens) == (2, 10)
    assert s.max_tree_nodes == 10 and s.depth == 32


# --- the default model ---------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_default_model_matches_ar():
    """Shipped head, a random LDLP (predictions over 0..6), measured costs, Spec-Bench prompts."""
    import json

    from adaeagle_ext.api import load
    from adaeagle_ext.bench.prompts import DEFAULT_PROMPTS

    pipe = load(None, dtype="float32", threads=1, progress=False)
    ldlp = random_ldlp(pipe.model, k_max=6, seed=0)
    lines = DEFAULT_PROMPTS.read_text().splitlines()
    eos = pipe._eos_ids()
    for i in (0, 100, 400):
        prompt = pipe.encode(json.loads(lines[i])["turns"][0], chat=True)
        (want,), _ = generate_ids(pipe.model, [prompt], max_new_tokens=32, eos_ids=eos)
        (got,), stats = generate_ids(pipe.model, [prompt], method=AdaEagleTree(ldlp=ldlp),
                                     max_new_tokens=32, eos_ids=eos)
        assert got.token_ids == want.token_ids
        assert stats.mean_accepted > 1.0
