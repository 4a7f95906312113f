"""Fuzzing ``aded_draft`` and ``aded_paths_to_tree``: random tri-gram tables match ``ref`` exactly;
hostile tables (unsorted keys, inconsistent offsets, negative successors, NaN / negative / inf
values) and bad knobs raise a clear error or give a well-formed tree of at most max_nodes."""

import pytest
import torch
from fuzz_helpers import (
    MUTATIONS,
    assert_clear_error,
    i32,
    i64,
    mutate,
    ok_or_clear_error,
    valid_tree,
)
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def _table(gen, vocab, rows, width):
    """CSR rows over random bigrams of a small vocabulary (keys ascending)."""
    keys = sorted({int(a) << 32 | int(b) for a, b in torch.randint(0, vocab, (rows, 2),
                                                                    generator=gen).tolist()})
    offsets, succ, vals = [0], [], []
    for _ in keys:
        n = int(torch.randint(1, width + 1, (), generator=gen))
        toks = torch.randperm(vocab, generator=gen)[:n].tolist()
        succ += toks
        vals += torch.rand(len(toks), generator=gen).tolist()
        offsets.append(len(succ))
    return [i64(keys), i32(offsets), i32(succ), torch.tensor(vals, dtype=torch.float32)]


@st.composite
def draft_cases(draw, hostile: bool):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    vocab = draw(st.integers(1, 6))
    table = _table(gen, vocab, draw(st.integers(0, 30)), draw(st.integers(1, 5)))
    online = _table(gen, vocab, draw(st.integers(0, 4)), 3)
    context = torch.randint(0, vocab, (draw(st.integers(1, 6)),), generator=gen)
    knobs = dict(iterations=draw(st.integers(0, 60)), max_len=draw(st.integers(1, 6)),
                 top_paths=draw(st.integers(1, 30)), max_nodes=draw(st.integers(2, 64)),
                 seed=draw(st.integers(0, 2**62)))
    if hostile:
        rows = draw(st.sampled_from([table, online]))
        what = draw(st.sampled_from(["keys", "offsets", "succ", "vals", "context", "knob"]))
        if what == "keys" and rows[0].numel() >= 2:
            rows[0] = rows[0].flip(0)  # descending: lookups miss, but must stay in bounds
        elif what == "offsets" and rows[1].numel() >= 2:
            rows[1][draw(st.integers(0, rows[1].numel() - 1))] = draw(
                st.sampled_from([-1, 2**31 - 1, -(2**31)]) | st.integers(-3, 200))
        elif what == "succ" and rows[2].numel():
            rows[2][0] = draw(st.sampled_from([-1, -(2**31)]))
        elif what == "vals" and rows[3].numel():
            rows[3][draw(st.integers(0, rows[3].numel() - 1))] = draw(
                st.sampled_from([float("nan"), float("inf"), -1.0, -float("inf"), 1e38]))
        elif what == "context":
            context[-1] = draw(st.sampled_from([-1, 2**31, 2**62]))
        else:
            name = draw(st.sampled_from(["iterations", "max_len", "top_paths", "max_nodes"]))
            knobs[name] = draw(st.sampled_from([-1, 0, 1, 64, 65, 2**31]))
    return table, online, context, knobs


@hypothesis.given(draft_cases(hostile=False))
def test_random_tables_match_ref(case):
    table, online, context, knobs = case
    got = ops.aded_draft(table, online, context, **knobs)
    want = ref.aded_draft(table, online, context.tolist(), **knobs)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@hypothesis.given(draft_cases(hostile=True))
def test_hostile_tables_raise_or_give_a_valid_tree(case):
    table, online, context, knobs = case
    got = ok_or_clear_error(lambda: ops.aded_draft(table, online, context, **knobs),
                            "aded_draft")
    if got is None:
        return
    n = int(got.num_nodes[0])
    assert 2 <= n <= knobs["max_nodes"]
    assert valid_tree(got.parents[:n].tolist())
    assert bool((got.parents[n:] == -1).all()) and bool((got.tokens[n:] == -1).all())
    assert bool((got.tokens[:n] >= 0).all())


def test_draft_edges():
    gen = torch.Generator().manual_seed(0)
    table = _table(gen, 4, 6, 3)
    empty = [i64([]), i32([0]), i32([]), torch.empty(0)]
    out = ops.aded_draft(empty, empty, i64([3]), fallback_token=7)
    assert out.num_nodes.tolist() == [2] and out.tokens[:2].tolist() == [3, 7]
    assert_clear_error(lambda: ops.aded_draft(table, empty, i64([])), "context")
    assert_clear_error(lambda: ops.aded_draft(table, empty, i64([1, 2]), fallback_token=-1),
                       "fallback_token")
    assert_clear_error(lambda: ops.aded_draft(table, empty, i64([1, 2]), c2=0.0), "c2")
    bad = [table[0], table[1][:-1], table[2], table[3]]
    assert_clear_error(lambda: ops.aded_draft(bad, empty, i64([1, 2])), "table_offsets")
    out = ops.aded_draft(table, empty, i64([1, 2]), max_nodes=2, out=None)
    assert out.parents.shape == (2,)


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("kind", MUTATIONS)
def test_draft_malformed_tensors_are_named(index, kind):
    gen = torch.Generator().manual_seed(1)
    table = _table(gen, 4, 6, 3)
    bad = mutate(table[index], kind)
    if bad is None:
        pytest.skip("does not apply")
    table[index] = bad
    name = ("table_keys", "table_offsets", "table_succ", "table_vals")[index]
    names = ["aded_draft"] + ([] if index == 0 and kind == "rank_down" else [name])
    assert_clear_error(lambda: ops.aded_draft(table, _table(gen, 4, 1, 1), i64([1, 2])), *names)


@hypothesis.given(st.data())
def test_paths_to_tree_matches_ref_or_raises(data):
    draw = data.draw
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    num, width = draw(st.integers(0, 40)), draw(st.integers(0, 8))
    paths = torch.randint(0, draw(st.integers(1, 5)), (num, width), generator=gen)
    lens = torch.randint(0, width + 1, (num,), generator=gen, dtype=torch.int32)
    max_nodes = draw(st.integers(2, 64))
    hostile = draw(st.sampled_from([None, "len", "token"]))
    if hostile == "len" and num:
        lens[draw(st.integers(0, num - 1))] = draw(st.sampled_from([-1, width + 1, 2**31 - 1]))
    elif hostile == "token" and num and width:
        lens[0], paths[0, 0] = width, draw(st.sampled_from([-1, -(2**62)]))
    if hostile and num and (hostile == "len" or width):
        assert_clear_error(lambda: ops.aded_paths_to_tree(paths, lens, 9, max_nodes),
                           "aded_paths_to_tree")
        return
    out = ops.aded_paths_to_tree(paths, lens, 9, max_nodes)
    parents, tokens = ref.aded_paths_to_tree(
        [p[:n].tolist() for p, n in zip(paths, lens.tolist(), strict=True)], 9, max_nodes)
    n = int(out.num_nodes[0])
    assert (out.parents[:n].tolist(), out.tokens[:n].tolist()) == (parents, tokens)


def test_paths_to_tree_bad_arguments():
    paths, lens = torch.zeros(2, 3, dtype=torch.int64), i32([1, 2])
    for max_nodes in (1, 65):
        assert_clear_error(lambda m=max_nodes: ops.aded_paths_to_tree(paths, lens, 0, m),
                           "max_nodes")
    assert_clear_error(lambda: ops.aded_paths_to_tree(paths, i32([1]), 0), "path_lens")
    assert_clear_error(lambda: ops.aded_paths_to_tree(paths.int(), lens, 0), "paths")
