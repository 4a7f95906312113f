"""verify_greedy: golden trees, random trees against ref.py, opcheck, bad input."""

from __future__ import annotations

import pytest
import torch
from tree_fixtures import random_batch

from adaeagle_ext import ops, ref


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def i64(values):
    return torch.tensor(values, dtype=torch.int64)


def run(device, parents, indptr, candidates, target_argmax, max_depth):
    """Links from ref.build_tree, then the op; returns the outputs as lists."""
    _, _, _, first_child, next_sibling, _, _ = ref.build_tree(
        i32(parents), i32(indptr), i32([0] * (len(indptr) - 1)), 63, 64)
    out = ops.verify_greedy(i64(candidates).to(device), i64(target_argmax).to(device),
                            first_child.to(device), next_sibling.to(device),
                            i32(indptr).to(device), max_depth)
    return [t.cpu().tolist() for t in out]


def test_golden_chain_fully_accepted(device):
    path, n, tokens = run(device, [-1, 0, 1, 2], [0, 4], [0, 11, 12, 13], [11, 12, 13, 14], 3)
    assert (path, n, tokens) == ([[0, 1, 2, 3]], [3], [[11, 12, 13, 14]])


def test_golden_chain_rejected_at_step_two(device):
    path, n, tokens = run(device, [-1, 0, 1, 2], [0, 4], [0, 11, 12, 13], [11, 99, 13, 14], 3)
    assert (path, n, tokens) == ([[0, 1, -1, -1]], [1], [[11, 99, -1, -1]])


def test_golden_bushy_second_sibling_matches(device):
    #        0
    #      / | \
    #     1  2  3
    #    / \    |
    #   4   5   6
    parents = [-1, 0, 0, 0, 1, 1, 3]
    candidates = [0, 10, 20, 30, 40, 50, 60]
    path, n, tokens = run(device, parents, [0, 7], candidates, [30, 1, 2, 60, 4, 5, 99], 3)
    assert (path, n, tokens) == ([[0, 3, 6, -1]], [2], [[30, 60, 99, -1]])


def test_golden_lowest_index_child_wins(device):
    parents = [-1, 0, 0, 1, 2]
    candidates = [0, 10, 10, 20, 20]
    path, n, tokens = run(device, parents, [0, 5], candidates, [10, 20, 20, 5, 6], 2)
    assert (path, n, tokens) == ([[0, 1, 3]], [2], [[10, 20, 5]])


def test_golden_ragged_batch(device):
    # request 0: a lone root; request 1: root with children 1, 2 and node 3 under 2
    parents = [-1, -1, 0, 0, 2]
    candidates = [7, 0, 10, 20, 30]
    target_argmax = [8, 20, 1, 30, 40]
    path, n, tokens = run(device, parents, [0, 1, 5], candidates, target_argmax, 2)
    assert path == [[0, -1, -1], [0, 2, 3]]
    assert n == [0, 2]
    assert tokens == [[8, -1, -1], [20, 30, 40]]


def test_golden_truncated_at_max_depth(device):
    parents = [-1, 0, 1, 2, 3]
    candidates = [0, 11, 12, 13, 14]
    target_argmax = [11, 12, 13, 14, 15]
    path, n, tokens = run(device, parents, [0, 5], candidates, target_argmax, 2)
    assert (path, n, tokens) == ([[0, 1, 2]], [2], [[11, 12, 13]])
    path, n, tokens = run(device, parents, [0, 5], candidates, target_argmax, 0)
    assert (path, n, tokens) == ([[0]], [0], [[11]])


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("vocab", [2, 4])
@pytest.mark.parametrize("max_depth", [0, 3, 63])
def test_matches_reference(device, batch, vocab, max_depth):
    gen = torch.Generator().manual_seed(batch * 100 + vocab * 10 + max_depth)
    for bushiness in (0.0, 0.5, 0.9):
        parents, indptr, prefix = random_batch(gen, batch, 64, bushiness)
        _, _, _, first_child, next_sibling, _, _ = ref.build_tree(parents, indptr, prefix, 63, 64)
        candidates = torch.randint(0, vocab, (parents.numel(),), generator=gen)
        target_argmax = torch.randint(0, vocab, (parents.numel(),), generator=gen)
        args = (candidates, target_argmax, first_child, next_sibling, indptr)
        expected = ref.verify_greedy(*args, max_depth)
        got = ops.verify_greedy(*(t.to(device) for t in args), max_depth)
        for name, e, g in zip(ops.Acceptance._fields, expected, got, strict=True):
            assert torch.equal(e, g.cpu()), name


def test_empty_batch(device):
    out = ops.verify_greedy(i64([]).to(device), i64([]).to(device), i32([]).to(device),
                            i32([]).to(device), i32([0]).to(device), 4)
    assert out.accept_local.shape == (0, 5) and out.out_tokens.shape == (0, 5)


def test_validate_flag_reports_bad_trees(device):
    with pytest.raises(RuntimeError, match="first_child\\[0\\]=5"):
        ops.verify_greedy(i64([0, 1]).to(device), i64([1, 2]).to(device), i32([5, -1]).to(device),
                          i32([-1, -1]).to(device), i32([0, 2]).to(device), 2, validate=True)


def test_out_variant_writes_given_buffers():
    out = ops.Acceptance(i32([[9, 9, 9]]), i32([9]), i64([[9, 9, 9]]))
    result = ops.verify_greedy(i64([0, 5]), i64([5, 6]), i32([1, -1]), i32([-1, -1]),
                               i32([0, 2]), 2, out=out)
    assert result.accept_local.data_ptr() == out.accept_local.data_ptr()
    assert out.accept_local.tolist() == [[0, 1, -1]]
    assert out.accept_len.tolist() == [1]
    assert out.out_tokens.tolist() == [[5, 6, -1]]
    with pytest.raises(ValueError, match="max_depth \\+ 1 = 4 columns"):
        ops.verify_greedy(i64([0, 5]), i64([5, 6]), i32([1, -1]), i32([-1, -1]), i32([0, 2]), 3,
                          out=out)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    parents, indptr, prefix = random_batch(gen, 3, 20)
    _, _, _, first_child, next_sibling, _, _ = ref.build_tree(parents, indptr, prefix, 19, 20)
    candidates = torch.randint(0, 3, (parents.numel(),), generator=gen)
    target_argmax = torch.randint(0, 3, (parents.numel(),), generator=gen)
    out = ref.verify_greedy(candidates, target_argmax, first_child, next_sibling, indptr, 5)
    torch.library.opcheck(
        torch.ops.adaeagle.verify_greedy,
        (candidates, target_argmax, first_child, next_sibling, indptr,
         *(torch.empty_like(t) for t in out)),
    )


@pytest.mark.parametrize(
    "first_child, next_sibling, tokens, message",
    [
        ([3, -1, -1], [-1, 2, -1], [0, 5, 5],
         "first_child\\[0\\]=3, expected -1 or a local id in \\(0, 3\\)"),
        ([1, 1, -1], [-1, -1, -1], [0, 5, 5],
         "first_child\\[1\\]=1, expected -1 or a local id in \\(1, 3\\)"),
        ([1, 0, -1], [-1, -1, -1], [0, 5, 5], "first_child\\[1\\]=0"),
        ([-7, -1, -1], [-1, -1, -1], [0, 5, 5], "first_child\\[0\\]=-7"),
        ([1, -1, -1], [-1, 1, -1], [0, 6, 5],
         "next_sibling\\[1\\]=1, expected -1 or a local id in \\(1, 3\\)"),
        ([1, -1, -1], [-1, 1000000, -1], [0, 6, 5], "next_sibling\\[1\\]=1000000"),
    ],
)
def test_bad_links_raise(first_child, next_sibling, tokens, message):
    # request 0 is a fine 2-node chain; the walk of request 1 (target token 5 everywhere)
    # reaches the bad link
    fc = i32([1, -1] + first_child)
    ns = i32([-1, -1] + next_sibling)
    candidates = i64([0, 5] + tokens)
    target_argmax = i64([5] * 5)
    with pytest.raises(RuntimeError, match="request 1: " + message):
        ops.verify_greedy(candidates, target_argmax, fc, ns, i32([0, 2, 5]), 4)


def test_unvisited_links_are_not_checked():
    # node 2's garbage link is never followed: the walk stops at node 1 (no match below it)
    out = ops.verify_greedy(i64([0, 5, 6]), i64([5, 9, 9]), i32([1, -1, 77]), i32([-1, 2, -1]),
                            i32([0, 3]), 2)
    assert out.accept_local.tolist() == [[0, 1, -1]]


@pytest.mark.parametrize(
    "indptr, message",
    [
        ([0, 0, 2], "request 0: tree has 0 nodes"),
        ([0, 1], "tree_indptr\\[-1\\] must equal candidates.numel\\(\\)=2"),
        ([1, 2], "tree_indptr\\[0\\] must be 0"),
        ([0, 2, 1, 2], "non-decreasing"),
    ],
)
def test_bad_indptr_raise(indptr, message):
    with pytest.raises(RuntimeError, match=message):
        ops.verify_greedy(i64([0, 5]), i64([5, 6]), i32([1, -1]), i32([-1, -1]), i32(indptr), 2)


def test_bad_arguments_raise():
    cand, tgt, fc, ns, indptr = i64([0, 5]), i64([5, 6]), i32([1, -1]), i32([-1, -1]), i32([0, 2])
    with pytest.raises(RuntimeError, match="candidates must be Long"):
        ops.verify_greedy(cand.int(), tgt, fc, ns, indptr, 2)
    with pytest.raises(RuntimeError, match="target_argmax.size\\(0\\) must be 2"):
        ops.verify_greedy(cand, i64([5]), fc, ns, indptr, 2)
    with pytest.raises(RuntimeError, match="first_child must be Int"):
        ops.verify_greedy(cand, tgt, fc.long(), ns, indptr, 2)
    with pytest.raises(RuntimeError, match="next_sibling must be contiguous"):
        ops.verify_greedy(cand, tgt, fc, i32([-1, 0, -1, 0])[::2], indptr, 2)
    with pytest.raises(RuntimeError, match="tree_indptr must have 1 dimension"):
        ops.verify_greedy(cand, tgt, fc, ns, indptr[None], 2)
    with pytest.raises(RuntimeError, match="accept_local.size\\(1\\) \\(max_depth \\+ 1\\)"):
        ops.verify_greedy(cand, tgt, fc, ns, indptr, 64)
    with pytest.raises(RuntimeError, match="out_tokens.size\\(1\\) must be 3"):
        ops.verify_greedy(cand, tgt, fc, ns, indptr, 2,
                          out=ops.Acceptance(i32([[0, 0, 0]]), i32([0]), i64([[0, 0]])))
