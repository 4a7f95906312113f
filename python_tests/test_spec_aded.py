"""The ``aded`` strategy: greedy identity with ``ar`` (tiny fp32 models, tables built from random
corpora over the small vocabulary), no-table mode, tables (stored table untouched, bad files,
the shipped table), determinism, tree post-processing, and the harness."""

import numpy as np
import pytest
import torch
from aded_fixtures import own_output_table, random_table, run_on_default_model
from eagle_fixtures import (  # noqa: F401
    PROMPTS,
    check_same,
    check_stop_strings,
    one_thread,
    tiny_target,
)

from adaeagle_ext import ops
from adaeagle_ext.drafters.aded import DEFAULT_TABLE_PATH
from adaeagle_ext.drafters.trigram import HEADER, TrigramFileError
from adaeagle_ext.spec.aded import (
    Aded,
    distinct_sibling_mask,
    is_default_target,
    parse_spec,
    prune_tree,
    tree_has_distinct_siblings,
)
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.strategy import StepState, make_strategy


def strategies(model, seed: int):
    random = random_table(seed)
    own = own_output_table(model, seed)
    big = ops.MAX_TREE_NODES  # ADED's own tree size: trees of every shape
    return [Aded(table=random, max_nodes=big), Aded(table=own, max_nodes=big),
            Aded(table="none", max_nodes=big), Aded(table=own), Aded(table=own, max_nodes=6,
                                                                       iterations=40),
            Aded("max_len=6,top_paths=8", table=random, max_nodes=big),
            Aded(table=own, c1=1.0, c2=2.0, seed=seed, max_nodes=big)]


# ---------------------------------------------------------------------------------------------
# greedy identity


@pytest.mark.parametrize("seed", range(8))
def test_greedy_matches_ar(seed):
    model = tiny_target(seed=seed)
    best = 0.0
    for strategy in strategies(model, seed):
        stats = check_same(model, strategy, PROMPTS, max_new_tokens=24)
        assert max(stats.draft_tokens) <= strategy.max_tree_nodes - 1
        best = max(best, max(stats.accepted_per_step))
    assert best >= 4, "no step accepted 3+ drafts: the test would not exercise acceptance"


class DepthRecorder(Aded):
    """Records (tokens the request may still emit, tree depth) of every proposed tree."""

    def propose(self, state):
        tree = super().propose(state)
        self.seen = getattr(self, "seen", [])
        ptr = tree.tree_indptr.tolist()
        for b in state.active.nonzero().flatten().tolist():
            parents = tree.parents[ptr[b]:ptr[b + 1]].tolist()
            depth = [0] * len(parents)
            for i in range(1, len(parents)):
                depth[i] = depth[parents[i]] + 1
            self.seen.append((int(state.remaining[b]), max(depth)))
        return tree


@pytest.mark.parametrize("max_new", [1, 2, 3, 5])
def test_max_new_tokens_inside_a_draft(max_new):
    model = tiny_target(seed=1)
    for table in (random_table(1), own_output_table(model, 1), "none"):
        strategy = DepthRecorder(table=table)
        check_same(model, strategy, PROMPTS, max_new_tokens=max_new)
        # drafts never go deeper than what a step can still commit
        assert all(depth <= remaining - 1 for remaining, depth in getattr(strategy, "seen", []))


def test_eos_inside_drafts():
    model = tiny_target(seed=2)
    ref, _ = generate_ids(model, PROMPTS, max_new_tokens=20)
    for eos in sorted({ref[0].token_ids[4], ref[3].token_ids[7]}):
        for strategy in strategies(model, 2)[::2]:
            check_same(model, strategy, PROMPTS, max_new_tokens=20, eos_ids=[eos])


def test_stop_strings_inside_drafts():
    model = tiny_target(seed=3)
    check_stop_strings(model, strategies(model, 3)[:2])


def test_near_the_cache_end():
    model = tiny_target(seed=4, max_pos=200)
    prompts = [[i % 8 for i in range(60)], [1, 2]]
    strategy = Aded(table=own_output_table(model, 4))
    need = 60 + 40 + strategy.max_tree_nodes
    check_same(model, strategy, prompts, max_new_tokens=40, max_seq_len=need)


def test_larger_vocabulary_matches_ar():
    model = tiny_target(vocab=101, seed=5)
    table = own_output_table(model, 5, vocab=101)
    prompts = [[3, 4, 9, 17, 3, 4], [100, 50, 51], [7]]
    stats = check_same(model, Aded(table=table), prompts, max_new_tokens=30)
    assert stats.mean_accepted > 1.0


# ---------------------------------------------------------------------------------------------
# no table, determinism, batching


def state_for(history: list[int]) -> StepState:
    return StepState(roots=torch.tensor([history[-1]]), active=torch.tensor([True]),
                     prefix_lens=torch.tensor([len(history) - 1], dtype=torch.int32),
                     history=[history], sampling=SamplingParams(), generators=[None])


def test_without_a_table_the_prompt_seeds_the_drafts():
    model = tiny_target(vocab=101, seed=0)
    strategy = Aded(table="none", max_nodes=ops.MAX_TREE_NODES)
    strategy.setup(model, 1)
    assert strategy.table is None
    tree = strategy.propose(state_for([40, 41, 42, 43, 44, 9, 40, 41]))
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    # the prompt continues (40, 41) with 42, 43, 44: that chain hangs off the root
    a = tokens.index(42)
    b = tokens.index(43)
    assert parents[a] == 0 and parents[b] == a and tokens[parents[tokens.index(44)]] == 43
    # output tokens reinforce the overlay too: (41, 42) -> 77 is learned after it is committed
    tree = strategy.propose(state_for([40, 41, 42, 43, 44, 9, 40, 41, 42, 77, 5, 41, 42]))
    assert 77 in tree.tokens.tolist()


def test_auto_table_is_none_for_other_targets():
    model = tiny_target(seed=0)
    assert not is_default_target(model)
    strategy = make_strategy("aded")
    strategy.setup(model, 2)
    assert strategy.table is None


def test_same_seed_same_output_and_batched_equals_single():
    model = tiny_target(seed=6)
    table = random_table(6)
    params = SamplingParams(temperature=1.0, seed=11)
    a, sa = generate_ids(model, PROMPTS, method=Aded(table=table), max_new_tokens=15,
                         sampling=params)
    b, sb = generate_ids(model, PROMPTS, method=Aded(table=table), max_new_tokens=15,
                         sampling=params)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert sa.draft_tokens == sb.draft_tokens
    for prompt, out in zip(PROMPTS, generate_ids(model, PROMPTS, method=Aded(table=table),
                                                 max_new_tokens=15)[0], strict=True):
        (alone,), _ = generate_ids(model, [prompt], method=Aded(table=table), max_new_tokens=15)
        assert out.token_ids == alone.token_ids


# ---------------------------------------------------------------------------------------------
# tables


def test_online_adaptation_leaves_the_loaded_table_alone(tmp_path):
    model = tiny_target(seed=7)
    path = tmp_path / "t.bin"
    own_output_table(model, 7).save(path)
    before = path.read_bytes()
    strategy = Aded(f"path={path}")
    arrays = [a.copy() for a in (strategy.table_arg.keys, strategy.table_arg.offsets,
                                 strategy.table_arg.succ, strategy.table_arg.probs)]
    stats = check_same(model, strategy, PROMPTS, max_new_tokens=30)
    assert stats.mean_accepted > 1.5  # the overlay was reinforced many times
    drafter = strategy.drafters[1]
    assert drafter.online.rows, "the overlay holds the reinforced tri-grams"
    for old, new in zip(arrays, (strategy.table.keys, strategy.table.offsets,
                                 strategy.table.succ, strategy.table.probs), strict=True):
        np.testing.assert_array_equal(old, new)
    assert path.read_bytes() == before
    # a reinforced tri-gram differs between the overlay and the stored table
    (k, row), = list(drafter.online.rows.items())[:1]
    t3, v = next(iter(row.items()))
    assert v > strategy.table.prob(k >> 32, k & 0xFFFFFFFF, t3)


def test_bad_table_files_raise(tmp_path):
    with pytest.raises(TrigramFileError, match="cannot read"):
        Aded(table=tmp_path / "missing.bin")
    good = tmp_path / "good.bin"
    random_table(0).save(good)
    corrupt = tmp_path / "corrupt.bin"
    data = bytearray(good.read_bytes())
    data[HEADER.size + 3] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(TrigramFileError, match="corrupt"):
        Aded(f"path={corrupt}")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a table at all, just some bytes that are long enough" * 2)
    with pytest.raises(TrigramFileError, match="not a tri-gram table"):
        Aded(table=str(junk))
    model = tiny_target(vocab=101, seed=0)
    with pytest.raises(ValueError, match="built for a vocabulary of 8 tokens, the model has 101"):
        generate_ids(model, [[1, 2]], method=Aded(table=good), max_new_tokens=2)


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="aded spec"):
        Aded("width=3")
    with pytest.raises(ValueError, match="iterations needs a number"):
        Aded("iterations=many")
    with pytest.raises(ValueError, match="max_nodes must be in"):
        Aded("max_nodes=65")
    with pytest.raises(ValueError, match="unknown option"):
        Aded(depth=3)
    with pytest.raises(ValueError, match="iterations >= 1"):
        Aded(iterations=0)
    assert parse_spec("path=/x/t.bin,iterations=20,c1=1.5") == dict(table="/x/t.bin",
                                                                      iterations=20, c1=1.5)
    s = make_strategy("aded:table=none,max_nodes=16")
    assert s.max_tree_nodes == 16 and s.table_arg == "none"


# ---------------------------------------------------------------------------------------------
# tree post-processing


def test_prune_tree_dedupes_siblings_and_cuts_depth():
    #        0
    #     /  |  \
    #    1:5 2:6 3:5 (dup of 1; its child 4 goes too)
    #    |        |
    #    5:7     4:1      5 is node 5 (depth 2), 6 below it (depth 3)
    #    |
    #    6:2
    parents = [-1, 0, 0, 0, 3, 1, 5]
    tokens = [9, 5, 6, 5, 1, 7, 2]
    assert distinct_sibling_mask(parents, tokens) == [True, True, True, False, False, True,
                                                      True]
    assert prune_tree(parents, tokens, 3) == [(5, 0), (6, 0), (7, 1), (2, 3)]
    assert prune_tree(parents, tokens, 1) == [(5, 0), (6, 0)]
    assert not tree_has_distinct_siblings(torch.tensor(parents, dtype=torch.int32),
                                          torch.tensor(tokens))


@pytest.mark.parametrize("seed", range(3))
def test_search_trees_have_distinct_siblings(seed):
    """verify_sampling's top-k rule is exact only for distinct siblings: the search's trees
    have them before any post-processing."""
    model = tiny_target(vocab=30, seed=seed)
    strategy = Aded(table=random_table(seed, vocab=30, docs=200), max_nodes=ops.MAX_TREE_NODES)
    strategy.setup(model, 1)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        drafter = strategy.drafters[0]
        drafter.reset(rng.integers(0, 30, size=40).tolist())
        parents, tokens = drafter.propose()
        assert parents.numel() > 2
        assert tree_has_distinct_siblings(parents, tokens)


# ---------------------------------------------------------------------------------------------
# harness


def test_bench_runs_aded_next_to_ar():
    from model_fixtures import ours, random_weights, tiny_config

    from adaeagle_ext.bench.metrics import OVERALL
    from adaeagle_ext.bench.prompts import Question
    from adaeagle_ext.bench.runner import Target, run_bench

    config = tiny_config(vocab_size=40)
    model = ours(config, random_weights(config, seed=5))
    target = Target(model, lambda m: [1] + [3 + ord(c) % 30 for c in m[-1]["content"]],
                    lambda ids: "x" * len(ids), [])
    questions = [Question("1", "qa", "qa", ("abcabcabc",)),
                 Question("2", "writing", "writing", ("aaaa", "bbbb"))]
    run = run_bench(target, questions, ["aded:table=none"], max_new_tokens=10, warmup=0,
                    progress=False)
    assert run.methods == ["ar", "aded:table=none"]
    assert run.lossless["aded:table=none"]["rate"] == 1.0
    for task in ("qa", "writing", OVERALL):
        assert run.summaries["aded:table=none"][task].tau >= 1.0


# ---------------------------------------------------------------------------------------------
# the default model


@pytest.mark.model
@pytest.mark.slow
def test_default_model_uses_the_shipped_table_and_matches_ar():
    if not DEFAULT_TABLE_PATH.is_file():
        pytest.skip("no shipped table")
    strategy = Aded()
    stats, same = run_on_default_model(strategy)
    assert strategy.table is not None and strategy.table.vocab_size == 49152
    assert same
    assert stats.mean_accepted > 1.0


def test_hf_peer_builds_from_a_packed_target():
    """``hf-pld`` beside ``aded`` on the default (native GGUF) weights: the peer dequantises
    the packed layers."""
    from model_fixtures import random_weights, tiny_config

    from adaeagle_ext import ops
    from adaeagle_ext.bench.peers import HFPeer, dense_state_dict
    from adaeagle_ext.models.llama import build_model
    from adaeagle_ext.packed import PackedWeight

    config = tiny_config(hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2)
    weights = random_weights(config, seed=3)
    packed = {k: PackedWeight.from_float(v, ops.GGML_Q8_0) for k, v in weights.items()
              if v.dim() == 2}
    model = build_model(config, {k: v for k, v in weights.items() if k not in packed},
                        torch.float32, packed)
    assert model.packed
    dense = dense_state_dict(model)
    for name, pw in packed.items():
        torch.testing.assert_close(dense[name], pw.dequantize())
    prompt = [5, 9, 13, 5, 9]
    peer = HFPeer(model, pld_tokens=4)
    (want,), _ = generate_ids(model, [prompt], max_new_tokens=12)
    assert peer.run(prompt, 12, []).token_ids == want.token_ids
