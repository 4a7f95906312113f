"""Adaptive chains (ddd, maxconf, adaeagle, adaeagle-ddd, oracle) at T = 0 emit exactly ``ar``'s
tokens (fp32, tiny random targets, random and fitted heads, random LDLPs), draft the lengths
their rules say, and reject bad specs with clear errors."""

import pytest
import torch
from eagle_fixtures import PROMPTS, check_same, one_thread, random_head, tiny_target  # noqa: F401
from ldlp_fixtures import fitted_head, spread_ldlp

from adaeagle_ext.spec import ldlp_length
from adaeagle_ext.spec.adaeagle import AdaEagle, AdaEagleDdd, prediction_error
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.oracle import OracleChain
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.strategy import make_strategy
from adaeagle_ext.spec.threshold_chains import DddChain, MaxConfChain

_HEADS: dict = {}


def setting(seed: int, k_max: int = 4):
    """(target, head, ldlp): odd seeds get a head fitted to the target (long accepted drafts),
    even seeds an untrained one."""
    if seed not in _HEADS:
        model = tiny_target(seed=seed)
        head = fitted_head(model, PROMPTS, seed=seed) if seed % 2 else random_head(model, seed)
        _HEADS[seed] = (model, head)
    model, head = _HEADS[seed]
    return model, head, spread_ldlp(model, seed=seed, k_max=k_max)


def adaptive(head, ldlp, gen):
    t = float(-3 * torch.rand((), generator=gen))
    c = float(torch.rand((), generator=gen))
    return [
        AdaEagle(head=head, ldlp=ldlp), AdaEagle(head=head, ldlp=ldlp, k_max=2),
        AdaEagleDdd(head=head, ldlp=ldlp), AdaEagleDdd(f"{t},k_max=6", head=head, ldlp=ldlp),
        DddChain(head=head), DddChain(f"{t},k_max=5", head=head),
        MaxConfChain(head=head), MaxConfChain(f"{c}", head=head),
        OracleChain(head=head), OracleChain("k_max=3", head=head),
    ]


def caps_single(stats, max_new: int, k_max: int) -> list[int]:
    """Per step of a one-request run without EOS, the loop's draft cap: k_max, fewer near
    max_new_tokens (the root was committed by the prefill)."""
    caps, out = [], 1
    for a in stats.accepted_per_step:
        caps.append(max(0, min(k_max, max_new - out - 1)))
        out += int(a)
    return caps


@pytest.mark.parametrize("seed", range(8))
def test_every_adaptive_strategy_matches_ar(seed):
    model, head, ldlp = setting(seed)
    gen = torch.Generator().manual_seed(seed)
    zero = full = accepted = False
    for strategy in adaptive(head, ldlp, gen):
        stats = check_same(model, strategy, PROMPTS, max_new_tokens=24)
        accepted |= max(stats.accepted_per_step) >= 3
        if isinstance(strategy, AdaEagle):
            zero |= 0 in stats.draft_tokens
            full |= strategy.k in stats.draft_tokens
    assert zero and full, "the LDLP should predict both 0 and k_max in a run"
    if seed % 2:
        assert accepted, "the fitted head should get 2+ drafts accepted"


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 9])
def test_max_new_tokens_inside_a_draft(max_new):
    model, head, ldlp = setting(1)
    for strategy in adaptive(head, ldlp, torch.Generator().manual_seed(max_new)):
        check_same(model, strategy, PROMPTS, max_new_tokens=max_new)


def test_eos_inside_drafts():
    model, head, ldlp = setting(3)
    ref, _ = generate_ids(model, PROMPTS, max_new_tokens=20)
    for eos in sorted({ref[0].token_ids[4], ref[1].token_ids[9], ref[3].token_ids[6]}):
        for strategy in adaptive(head, ldlp, torch.Generator().manual_seed(eos)):
            check_same(model, strategy, PROMPTS, max_new_tokens=20, eos_ids=[eos])


def test_adaeagle_drafts_exactly_the_predicted_length():
    model, head, ldlp = setting(5, k_max=5)
    for k_max in (5, 3):
        strategy = AdaEagle(head=head, ldlp=ldlp, k_max=k_max)
        stats = check_same(model, strategy, [PROMPTS[1]], max_new_tokens=40)
        pred = strategy.predicted_lengths
        assert len(pred) == len(stats.draft_tokens)
        caps = caps_single(stats, 40, k_max)
        assert stats.draft_tokens == [min(p, c) for p, c in zip(pred, caps, strict=True)]
        assert 0 in pred and 5 in pred


def test_ldlp_predicting_zero_is_ar_and_predicting_k_max_is_a_fixed_chain():
    model, head, _ = setting(1)
    never = spread_ldlp(model, seed=2, k_max=4, mean=-50.0, spread=1.0)
    stats = check_same(model, AdaEagle(head=head, ldlp=never), PROMPTS, max_new_tokens=16)
    assert set(stats.draft_tokens) == {0} and set(stats.accepted_per_step) == {1.0}
    always = spread_ldlp(model, seed=2, k_max=4, mean=50.0, spread=1.0)
    got = check_same(model, AdaEagle(head=head, ldlp=always), PROMPTS, max_new_tokens=16)
    want = check_same(model, EagleChain(4, head=head), PROMPTS, max_new_tokens=16)
    assert got.accepted_per_step == want.accepted_per_step
    assert got.draft_tokens == want.draft_tokens


def test_adaeagle_ddd_drafts_at_least_the_predicted_length():
    model, head, ldlp = setting(3, k_max=4)
    for spec in ("-0.6", "0"):
        strategy = AdaEagleDdd(spec, head=head, ldlp=ldlp, k_max=6)
        stats = check_same(model, strategy, [PROMPTS[0]], max_new_tokens=40)
        caps = caps_single(stats, 40, 6)
        for d, p, c in zip(stats.draft_tokens, strategy.predicted_lengths, caps, strict=True):
            assert min(max(p, 1), c) <= d <= c  # the empty draft's log-prob 0 >= threshold
    # threshold 0: beyond the prediction only a token of probability 1 continues
    assert stats.draft_tokens == [min(max(p, 1), c) for p, c in
                                  zip(strategy.predicted_lengths, caps, strict=True)]


def test_threshold_extremes():
    model, head, _ = setting(0)
    chain = check_same(model, EagleChain(6, head=head), PROMPTS, max_new_tokens=20)
    for strategy in (DddChain("-1e9,k_max=6", head=head), MaxConfChain("0,k_max=6", head=head)):
        got = check_same(model, strategy, PROMPTS, max_new_tokens=20)
        assert got.draft_tokens == chain.draft_tokens
    one = check_same(model, DddChain("0", head=head), PROMPTS, max_new_tokens=20)
    assert set(one.draft_tokens) <= {0, 1} and one.draft_tokens.count(1) > 10
    none = check_same(model, MaxConfChain("1", head=head), PROMPTS, max_new_tokens=20)
    assert set(none.draft_tokens) == {0}


def test_oracle_drafts_only_what_the_target_accepts():
    for seed in (1, 3):
        model, head, _ = setting(seed)
        for k_max in (3, 8):
            oracle = OracleChain(head=head, k_max=k_max)
            stats = check_same(model, oracle, PROMPTS, max_new_tokens=30)
            assert [d + 1 for d in stats.draft_tokens] == stats.accepted_per_step
            assert oracle.lookahead_s > 0
            # a greedy chain of k_max accepts exactly the same: the oracle only trims waste
            chain = check_same(model, EagleChain(k_max, head=head), PROMPTS, max_new_tokens=30)
            assert chain.accepted_per_step == stats.accepted_per_step
        assert max(stats.accepted_per_step) >= 4


def test_oracle_is_greedy_only():
    model, head, _ = setting(0)
    with pytest.raises(ValueError, match="greedy only"):
        generate_ids(model, PROMPTS, method=OracleChain(head=head), max_new_tokens=4,
                     sampling=SamplingParams(temperature=1.0, seed=0))


def test_prediction_error():
    # accepted drafts 2, 0, 3, 1 (bonus included below) against predictions 2, 1, 1, 1
    err = prediction_error([2, 1, 1, 1], [3.0, 1.0, 4.0, 2.0])
    assert err == dict(steps=4, mae=0.75, bias=-0.25, under=0.25, exact=0.5, over=0.25)
    with pytest.raises(ValueError, match="predictions"):
        prediction_error([1], [])


def test_methods_by_name():
    s = make_strategy("ddd:-0.5,k_max=5")
    assert isinstance(s, DddChain) and s.threshold == -0.5 and s.k == 5
    assert s.max_tree_nodes == 6
    assert make_strategy("ddd").k == 8
    m = make_strategy("maxconf:0.25")
    assert isinstance(m, MaxConfChain) and m.threshold == 0.25
    assert make_strategy("oracle:k_max=12").k == 12


@pytest.mark.parametrize("method, match", [
    ("ddd:abc", "ddd threshold must be a number"),
    ("ddd:0.5", "log-probability"),
    ("ddd:nan", "finite"),
    ("ddd:k_max=0", "k_max must be an integer"),
    ("ddd:k_max=64", "k_max must be an integer"),
    ("ddd:k_max=2.5", "k_max must be an integer"),
    ("ddd:-1,-2", "given twice"),
    ("ddd:depth=3", "unknown option 'depth'"),
    ("maxconf:-0.1", "probability"),
    ("maxconf:1.5", "probability"),
    ("maxconf:high", "maxconf threshold must be a number"),
    ("oracle:0.5", "expected k_max="),
])
def test_bad_specs_raise(method, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(method)


def test_bad_ldlp_arguments_raise(monkeypatch, tmp_path):
    model = tiny_target(seed=0)
    ldlp = spread_ldlp(model, k_max=4)
    with pytest.raises(ValueError, match="log-probability"):
        AdaEagleDdd("0.3", ldlp=ldlp)
    with pytest.raises(ValueError, match="log-probability"):
        AdaEagleDdd(ldlp=ldlp, threshold=1.0)
    with pytest.raises(ValueError, match="expected k_max="):
        AdaEagle("0.5", ldlp=ldlp)
    with pytest.raises(FileNotFoundError, match="no such file"):
        AdaEagle(ldlp=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="ldlp must be"):
        AdaEagle(ldlp=3)
    monkeypatch.setattr(ldlp_length, "DEFAULT_LDLP_PATH", tmp_path / "none.safetensors")
    for method in ("adaeagle", "adaeagle-ddd:-0.4"):
        with pytest.raises(ValueError, match="no LDLP ships"):
            make_strategy(method)
    other = spread_ldlp(tiny_target(seed=0, hidden_size=32, num_heads=2, num_kv_heads=1))
    with pytest.raises(ValueError, match="hidden size"):
        generate_ids(model, PROMPTS, method=AdaEagle(head=random_head(model), ldlp=other),
                     max_new_tokens=2)


def test_ldlp_file_round_trip(tmp_path):
    model, head, (module, _) = setting(0)
    path = tmp_path / "ldlp.safetensors"
    module.save(path, k_max=3)
    strategy = AdaEagle(head=head, ldlp=str(path))
    assert strategy.k == 3
    stats = check_same(model, strategy, PROMPTS, max_new_tokens=16)
    assert max(stats.draft_tokens) <= 3


class RecordingAdaEagle(AdaEagle):
    """Records (request history, drafted tokens) of every step."""

    def propose(self, state):
        tree = super().propose(state)
        ptr = tree.tree_indptr.tolist()
        for b in state.active.nonzero().flatten().tolist():
            self.seen.setdefault(b, []).append(
                (list(state.history[b]), tree.tokens[ptr[b] + 1:ptr[b + 1]].tolist()))
        return tree


def test_drafts_after_skipped_steps_equal_fresh_drafts():
    """Steps that draft nothing defer the head's refresh; the next drafts must be exactly what
    a fresh chain drafts from the same history (a lost or doubled pending pair would differ)."""
    model, head, ldlp = setting(1, k_max=4)
    strategy = RecordingAdaEagle(head=head, ldlp=ldlp)
    strategy.seen = {}
    check_same(model, strategy, PROMPTS, max_new_tokens=24)
    after_skip = [(h, d) for steps in strategy.seen.values()
                  for (_, d0), (h, d) in zip(steps, steps[1:], strict=False) if not d0 and d]
    assert len(after_skip) >= 4
    for history, drafted in after_skip[:8]:
        fresh = RecordingAdaEagle(head=head, ldlp=spread_ldlp(model, k_max=4, mean=50.0))
        fresh.seen = {}
        generate_ids(model, [history[:-1]], method=fresh, max_new_tokens=len(drafted) + 2)
        assert fresh.seen[0][0][0] == history
        assert fresh.seen[0][0][1][:len(drafted)] == drafted


def test_resolve_ldlp_loads_a_file_once(tmp_path):
    model = tiny_target(seed=4)
    first_path, other_path = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    spread_ldlp(model, seed=1, k_max=5)[0].save(first_path, k_max=5)
    spread_ldlp(model, seed=2, k_max=3)[0].save(other_path, k_max=3)
    first, k = ldlp_length.resolve_ldlp(str(first_path), model)
    again, k_again = ldlp_length.resolve_ldlp(first_path, model)
    assert again is first and k == k_again == 5
    other, k_other = ldlp_length.resolve_ldlp(str(other_path), model)
    assert other is not first and k_other == 3
    assert not torch.equal(other.proj.weight, first.proj.weight)
    wider = tiny_target(seed=0, hidden_size=32, num_heads=2, num_kv_heads=1)
    with pytest.raises(ValueError, match="hidden size"):  # the cached file still fits no other
        ldlp_length.resolve_ldlp(first_path, wider)
