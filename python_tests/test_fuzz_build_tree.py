"""Fuzzing ``build_tree``: random and malformed trees either match ``ref.build_tree`` or raise a
clear error; malformed tensors are rejected by name."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, i32, mutate, valid_tree
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)
from tree_fixtures import indptr_of, random_parents

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def tree_batches(draw, corrupt: bool):
    """(parents list, indptr list, prefix list), possibly with corrupted parents."""
    batch = draw(st.integers(0, 4))
    sizes = [draw(st.sampled_from([1, 2, 3, 7, 63, 64]) | st.integers(1, 64))
             for _ in range(batch)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    bushiness = draw(st.sampled_from([0.0, 0.3, 1.0]))
    parents = [p for s in sizes for p in random_parents(gen, s, bushiness)]
    if corrupt and parents:
        for _ in range(draw(st.integers(1, 3))):
            node = draw(st.integers(0, len(parents) - 1))
            # negative, self (a cycle), later (not topological), out of range, the root's -1
            parents[node] = draw(st.sampled_from([-1, -2, -(2**31), 64, 65, 2**31 - 1])
                                 | st.integers(-3, 70))
    prefix = [draw(st.integers(0, 1000)) for _ in range(batch)]
    return parents, indptr_of(sizes), prefix


def _run_and_compare(parents, indptr, prefix, max_depth, max_leaves):
    args = (i32(parents), i32(indptr), i32(prefix), max_depth, max_leaves)
    trees = [parents[indptr[b]:indptr[b + 1]] for b in range(len(indptr) - 1)]
    if not all(valid_tree(t) for t in trees):
        assert_clear_error(lambda: ops.build_tree(*args), "build_tree", "request")
        return
    loose = ref.build_tree(*args[:3], 63, 64)
    if not (bool((loose[1] <= max_depth).all()) and bool((loose[6] <= max_leaves).all())):
        assert_clear_error(lambda: ops.build_tree(*args), "build_tree", "request")
        return
    got, want = ops.build_tree(*args), ref.build_tree(*args)
    for name, g, w in zip(ops.TreeArrays._fields, got, want, strict=True):
        assert torch.equal(g, w), name


@hypothesis.given(tree_batches(corrupt=False), st.integers(0, 63), st.integers(1, 64))
def test_valid_trees_match_ref(batch, max_depth, max_leaves):
    _run_and_compare(*batch, max_depth, max_leaves)


@hypothesis.given(tree_batches(corrupt=True), st.integers(0, 63), st.integers(1, 64))
def test_malformed_parents_raise(batch, max_depth, max_leaves):
    _run_and_compare(*batch, max_depth, max_leaves)


@hypothesis.given(st.lists(st.integers(-70, 140), min_size=1, max_size=6),
                  st.integers(0, 140))
def test_malformed_indptr_raises_or_matches(indptr, n):
    """Any indptr over n chain nodes: a clear error unless it is a valid CSR of 1..64-node
    trees, which must then match the reference."""
    batch = len(indptr) - 1
    starts_ok = indptr[0] == 0 and indptr[-1] == n
    sizes = [indptr[b + 1] - indptr[b] for b in range(batch)]
    parents = []
    for s in sizes:
        parents += list(range(-1, max(s, 0) - 1))
    args = (i32(parents if starts_ok and all(s >= 0 for s in sizes) else [-1] * n),
            i32(indptr), i32([0] * batch), 63, 64)
    if starts_ok and all(1 <= s <= 64 for s in sizes):
        got, want = ops.build_tree(*args), ref.build_tree(*args)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    else:
        assert_clear_error(lambda: ops.build_tree(*args), "build_tree")


def test_edges_empty_batch_64_and_65_nodes_negative_prefix():
    got = ops.build_tree(i32([]), i32([0]), i32([]), 5, 3)
    assert got.mask_bits.numel() == 0 and got.leaf_paths.shape == (0, 3, 6)
    chain64 = list(range(-1, 63))
    got = ops.build_tree(i32(chain64), i32([0, 64]), i32([7]), 63, 1)
    assert int(got.mask_bits[63]) == -1  # all 64 bits set
    assert torch.equal(got.positions, torch.arange(7, 71))
    assert_clear_error(lambda: ops.build_tree(i32(list(range(-1, 64))), i32([0, 65]), i32([0]),
                                              63, 1), "build_tree", "65 nodes")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([0, 1]), i32([-1]), 1, 1),
                       "prefix_lens")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([0, 1]), i32([0]), 64, 1),
                       "max_depth")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([0, 1]), i32([0]), -1, 1),
                       "max_depth")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([0, 1]), i32([0]), 3, 0),
                       "max_leaves")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([0, 1]), i32([0]), 3, 65),
                       "max_leaves")
    assert_clear_error(lambda: ops.build_tree(i32([-1]), i32([]), i32([]), 3, 1),
                       "tree_indptr")


@pytest.mark.parametrize("arg", ["parents", "tree_indptr", "prefix_lens"])
@pytest.mark.parametrize("kind", MUTATIONS)
def test_malformed_tensors_are_named(arg, kind):
    args = dict(parents=i32([-1, -1, 0, 0]), tree_indptr=i32([0, 1, 4]), prefix_lens=i32([3, 9]))
    bad = mutate(args[arg], kind)
    if bad is None:
        pytest.skip(f"{kind} does not apply")
    args[arg] = bad
    assert_clear_error(lambda: ops.build_tree(*args.values(), 3, 4), "build_tree", arg)


@pytest.mark.parametrize("field", ops.TreeArrays._fields)
@pytest.mark.parametrize("kind", ["dtype", "rank_up", "size"])
def test_malformed_outputs_are_named(field, kind):
    args = (i32([-1, -1, 0, 0]), i32([0, 1, 4]), i32([3, 9]), 3, 4)
    out = ops.build_tree(*args)
    t = getattr(out, field)
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    out = out._replace(**{field: bad})
    assert_clear_error(lambda: ops.build_tree(*args, out=out), "build_tree", field)


def test_meta_tensors_need_no_data():
    """The fake implementation serves meta tensors (shape propagation under torch.compile)."""
    dev = "meta"
    parents = torch.empty(5, dtype=torch.int32, device=dev)
    out = ops.build_tree(parents, torch.empty(3, dtype=torch.int32, device=dev),
                         torch.empty(2, dtype=torch.int32, device=dev), 4, 2)
    assert out.leaf_paths.shape == (2, 2, 5) and out.mask_bits.device.type == "meta"
