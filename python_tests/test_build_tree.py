"""build_tree: golden trees, random trees against ref.py, opcheck, bad input."""

from __future__ import annotations

import pytest
import torch
from tree_fixtures import random_batch

from adaeagle_ext import ops, ref


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def run(device, parents, indptr, prefix, max_depth, max_leaves):
    out = ops.build_tree(
        i32(parents).to(device), i32(indptr).to(device), i32(prefix).to(device), max_depth,
        max_leaves,
    )
    return [t.cpu().tolist() for t in out]


def test_golden_chain(device):
    mask, depth, pos, child, sibling, paths, leaves = run(
        device, [-1, 0, 1, 2], [0, 4], [10], max_depth=3, max_leaves=2
    )
    assert mask == [0b1, 0b11, 0b111, 0b1111]
    assert depth == [0, 1, 2, 3]
    assert pos == [10, 11, 12, 13]
    assert child == [1, 2, 3, -1]
    assert sibling == [-1, -1, -1, -1]
    assert paths == [[[0, 1, 2, 3], [-1, -1, -1, -1]]]
    assert leaves == [1]


def test_golden_bushy(device):
    #        0
    #      / | \
    #     1  2  3
    #    / \    |
    #   4   5   6
    mask, depth, pos, child, sibling, paths, leaves = run(
        device, [-1, 0, 0, 0, 1, 1, 3], [0, 7], [5], max_depth=2, max_leaves=4
    )
    assert mask == [0b1, 0b11, 0b101, 0b1001, 0b10011, 0b100011, 0b1001001]
    assert depth == [0, 1, 1, 1, 2, 2, 2]
    assert pos == [5, 6, 6, 6, 7, 7, 7]
    assert child == [1, 4, -1, 6, -1, -1, -1]
    assert sibling == [-1, 2, 3, -1, 5, -1, -1]
    assert paths == [[[0, 2, -1], [0, 1, 4], [0, 1, 5], [0, 3, 6]]]
    assert leaves == [4]


def test_golden_ragged_batch(device):
    # request 0: root with two children; request 1: a lone root; request 2: chain of 2
    mask, depth, pos, child, sibling, paths, leaves = run(
        device, [-1, 0, 0, -1, -1, 0], [0, 3, 4, 6], [0, 7, 3], max_depth=1, max_leaves=2
    )
    assert mask == [1, 3, 5, 1, 1, 3]
    assert depth == [0, 1, 1, 0, 0, 1]
    assert pos == [0, 1, 1, 7, 3, 4]
    assert child == [1, -1, -1, -1, 1, -1]
    assert sibling == [-1, 2, -1, -1, -1, -1]
    assert paths == [[[0, 1], [0, 2]], [[0, -1], [-1, -1]], [[0, 1], [-1, -1]]]
    assert leaves == [2, 1, 1]


def test_sign_bit_row_at_64_nodes(device):
    parents = list(range(-1, 63))  # a 64-node chain: node 63's row sets bit 63
    mask = run(device, parents, [0, 64], [0], max_depth=63, max_leaves=1)[0]
    assert mask[63] == -1  # all 64 bits set, as int64


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("bushiness", [0.0, 0.3, 0.9])
def test_matches_reference(device, batch, bushiness):
    gen = torch.Generator().manual_seed(batch * 100 + int(bushiness * 10))
    for _ in range(5):
        parents, indptr, prefix = random_batch(gen, batch, 64, bushiness)
        expected = ref.build_tree(parents, indptr, prefix, 63, 64)
        got = ops.build_tree(parents.to(device), indptr.to(device), prefix.to(device), 63, 64)
        for name, e, g in zip(ops.TreeArrays._fields, expected, got, strict=True):
            assert torch.equal(e, g.cpu()), name


def test_empty_batch(device):
    out = ops.build_tree(i32([]).to(device), i32([0]).to(device), i32([]).to(device), 4, 4)
    assert out.leaf_paths.shape == (0, 4, 5)


def test_out_variant_writes_given_buffers():
    parents, indptr, prefix = i32([-1, 0, 0]), i32([0, 3]), i32([2])
    out = ops.TreeArrays(*(torch.full_like(t, 99) for t in ref.build_tree(parents, indptr,
                                                                           prefix, 2, 3)))
    result = ops.build_tree(parents, indptr, prefix, 2, 3, out=out)
    assert result.mask_bits.data_ptr() == out.mask_bits.data_ptr()
    assert out.mask_bits.tolist() == [1, 3, 5]
    assert out.leaf_paths.tolist() == [[[0, 1, -1], [0, 2, -1], [-1, -1, -1]]]


def test_opcheck():
    parents, indptr, prefix = random_batch(torch.Generator().manual_seed(0), 3, 20)
    out = ref.build_tree(parents, indptr, prefix, 19, 20)
    torch.library.opcheck(
        torch.ops.adaeagle.build_tree,
        (parents, indptr, prefix, 19, 20, *(torch.empty_like(t) for t in out)),
    )


@pytest.mark.parametrize(
    "parents, indptr, message",
    [
        ([0, 0], [0, 2], "parents\\[0\\] of the root is 0, expected -1"),
        ([-1, 0, 2], [0, 3], "node 2 has parent 2"),
        ([-1, 0, -1], [0, 3], "node 2 has parent -1"),
        ([-1] + list(range(64)), [0, 65], "tree has 65 nodes"),
        ([-1, 0], [0, 1], "tree_indptr\\[-1\\] must equal"),
        ([-1, 0], [1, 2], "tree_indptr\\[0\\] must be 0"),
        ([-1, -1], [0, 2, 1, 2], "non-decreasing"),
    ],
)
def test_bad_trees_raise(parents, indptr, message):
    prefix = i32([0] * (len(indptr) - 1))
    with pytest.raises(RuntimeError, match=message):
        ops.build_tree(i32(parents), i32(indptr), prefix, 63, 64)


def test_limits_raise():
    parents, indptr, prefix = i32([-1, 0, 1, 0]), i32([0, 4]), i32([0])
    with pytest.raises(RuntimeError, match="depth 2 > max_depth=1"):
        ops.build_tree(parents, indptr, prefix, 1, 4)
    with pytest.raises(RuntimeError, match="more than max_leaves=1"):
        ops.build_tree(parents, indptr, prefix, 3, 1)
    with pytest.raises(RuntimeError, match="max_depth must be in"):
        ops.build_tree(parents, indptr, prefix, 64, 4)


def test_bad_arguments_raise():
    parents, indptr, prefix = i32([-1, 0]), i32([0, 2]), i32([0])
    with pytest.raises(RuntimeError, match="parents must be Int"):
        ops.build_tree(parents.long(), indptr, prefix, 1, 1)
    with pytest.raises(RuntimeError, match="prefix_lens.size\\(0\\) must be 1"):
        ops.build_tree(parents, indptr, i32([0, 0]), 1, 1)
    with pytest.raises(RuntimeError, match="tree_indptr must have 1 dimension"):
        ops.build_tree(parents, indptr[None], prefix, 1, 1)
    with pytest.raises(RuntimeError, match="parents must be contiguous"):
        ops.build_tree(i32([-1, 5, 0, 5])[::2], indptr, prefix, 1, 1)
    with pytest.raises(RuntimeError, match="prefix_lens\\[0\\]=-3 must be >= 0"):
        ops.build_tree(parents, indptr, i32([-3]), 1, 1)
