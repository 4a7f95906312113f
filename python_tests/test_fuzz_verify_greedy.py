"""Fuzzing ``verify_greedy``: random trees and corrupted child/sibling links either match
``ref.verify_greedy`` or raise a clear error; malformed tensors are rejected by name."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, i32, i64, mutate, ok_or_clear_error
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)
from tree_fixtures import indptr_of, random_parents

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def greedy_cases(draw, corrupt: bool):
    batch = draw(st.integers(0, 4))
    sizes = [draw(st.sampled_from([1, 2, 64]) | st.integers(1, 64)) for _ in range(batch)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    parents = [p for s in sizes for p in random_parents(gen, s, draw(st.sampled_from([0, .5])))]
    indptr = indptr_of(sizes)
    arrays = ref.build_tree(i32(parents), i32(indptr), i32([0] * batch), 63, 64)
    first, nxt = arrays[3].tolist(), arrays[4].tolist()
    if corrupt and parents:
        for _ in range(draw(st.integers(1, 3))):
            links = first if draw(st.booleans()) else nxt
            links[draw(st.integers(0, len(links) - 1))] = draw(
                st.sampled_from([-2, -(2**31), 0, 64, 2**31 - 1]) | st.integers(-3, 70))
    vocab = draw(st.integers(1, 4))  # small: many matches, long accepted paths
    n = len(parents)
    cand = torch.randint(0, vocab, (n,), generator=gen).tolist()
    argmax = torch.randint(0, vocab, (n,), generator=gen).tolist()
    max_depth = draw(st.integers(0, 63))
    return i64(cand), i64(argmax), i32(first), i32(nxt), i32(indptr), max_depth


def _links_ok(first, nxt, indptr) -> bool:
    """Every link is -1 or a later node of the same tree (what the walk relies on)."""
    for b in range(indptr.numel() - 1):
        lo, hi = int(indptr[b]), int(indptr[b + 1])
        for i in range(lo, hi):
            for v in (int(first[i]), int(nxt[i])):
                if v != -1 and not (i - lo < v < hi - lo):
                    return False
    return True


@hypothesis.given(greedy_cases(corrupt=False))
def test_valid_trees_match_ref(case):
    got = ops.verify_greedy(*case)
    want = ref.verify_greedy(*case)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@hypothesis.given(greedy_cases(corrupt=True))
def test_corrupted_links_raise_or_match(case):
    got = ok_or_clear_error(lambda: ops.verify_greedy(*case), "verify_greedy")
    if got is None:
        return
    # No error: every visited link was well-formed, so the reference walks the same nodes.
    if _links_ok(case[2], case[3], case[4]):
        want = ref.verify_greedy(*case)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert bool(((got.accept_len >= 0) & (got.accept_len <= case[5])).all())
    n_per = (case[4][1:] - case[4][:-1]).tolist()
    for b, size in enumerate(n_per):
        path = got.accept_local[b, : int(got.accept_len[b]) + 1].tolist()
        assert path[0] == 0 and all(0 <= v < size for v in path)
        assert all(a < c for a, c in zip(path, path[1:], strict=False))


def test_edges():
    # empty batch
    got = ops.verify_greedy(i64([]), i64([]), i32([]), i32([]), i32([0]), 3)
    assert got.accept_local.shape == (0, 4)
    # an empty tree in a batch
    assert_clear_error(lambda: ops.verify_greedy(i64([1]), i64([1]), i32([-1]), i32([-1]),
                                                 i32([0, 0, 1]), 2), "verify_greedy")
    # indptr not reaching N, decreasing, not starting at 0
    for indptr in ([0, 1], [0, 3, 2], [1, 2]):
        assert_clear_error(lambda ip=indptr: ops.verify_greedy(
            i64([1, 1]), i64([1, 1]), i32([1, -1]), i32([-1, -1]), i32(ip), 2),
            "verify_greedy")
    # a self loop (first_child pointing at itself) must not hang
    assert_clear_error(lambda: ops.verify_greedy(i64([1, 1]), i64([1, 1]), i32([0, -1]),
                                                 i32([-1, -1]), i32([0, 2]), 5), "verify_greedy")
    # 64-node chain, all accepted
    first = list(range(1, 64)) + [-1]
    got = ops.verify_greedy(i64([3] * 64), i64([3] * 64), i32(first), i32([-1] * 64),
                            i32([0, 64]), 63)
    assert int(got.accept_len[0]) == 63
    for bad_depth in (-1, 64):
        assert_clear_error(lambda d=bad_depth: ops.verify_greedy(
            i64([1]), i64([1]), i32([-1]), i32([-1]), i32([0, 1]), d), "max_depth")


ARGS = ("candidates", "target_argmax", "first_child", "next_sibling", "tree_indptr")


def _base():
    return dict(candidates=i64([0, 4, 5]), target_argmax=i64([4, 5, 1]),
                first_child=i32([1, 2, -1]), next_sibling=i32([-1, -1, -1]),
                tree_indptr=i32([0, 3]))


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("kind", [*MUTATIONS, "size"])
def test_malformed_tensors_are_named(arg, kind):
    args = _base()
    t = args[arg]
    args[arg] = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    if arg in ("candidates", "tree_indptr") and kind == "size":
        # a size change of the defining tensor moves the error to another argument's check
        assert_clear_error(lambda: ops.verify_greedy(*args.values(), 2), "verify_greedy")
    else:
        assert_clear_error(lambda: ops.verify_greedy(*args.values(), 2), "verify_greedy", arg)


@pytest.mark.parametrize("field", ops.Acceptance._fields)
@pytest.mark.parametrize("kind", ["dtype", "rank_up", "size"])
def test_malformed_outputs_are_named(field, kind):
    out = ops.verify_greedy(*_base().values(), 2)
    t = getattr(out, field)
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    out = out._replace(**{field: bad})
    assert_clear_error(lambda: ops.verify_greedy(*_base().values(), 2, out=out), "verify_greedy")
