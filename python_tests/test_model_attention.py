"""The runtime's vectorised tree attention and tree inputs against ``ref``."""

import pytest
import torch

from adaeagle_ext import ref
from adaeagle_ext.models.attention import tree_attention
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs


def random_parents(sizes, gen):
    parents = []
    for s in sizes:
        for i in range(s):
            parents.append(-1 if i == 0 else int(torch.randint(0, i, (), generator=gen)))
    return torch.tensor(parents, dtype=torch.int32)


def indptr_of(sizes):
    ind = torch.zeros(len(sizes) + 1, dtype=torch.int32)
    ind[1:] = torch.cumsum(torch.tensor(sizes), 0)
    return ind


@pytest.mark.parametrize("sizes,prefix", [([1], [0]), ([5, 0, 7], [10, 3, 0]),
                                          ([64, 2], [5, 40]), ([3, 64, 1, 9], [0, 0, 17, 2])])
def test_tree_inputs_match_build_tree(sizes, prefix):
    gen = torch.Generator().manual_seed(sum(sizes))
    parents = random_parents(sizes, gen)
    ind = indptr_of(sizes)
    prefix = torch.tensor(prefix, dtype=torch.int32)
    mask, _, positions, *_ = ref.build_tree(parents, ind, prefix, 64, 64)
    got_pos, got_mask = tree_inputs(parents, ind, prefix)
    assert torch.equal(got_mask, mask)
    assert torch.equal(got_pos, positions)


def test_chain_inputs_match_build_tree():
    sizes = [64, 1, 0, 13]
    prefix = torch.tensor([0, 7, 4, 100], dtype=torch.int32)
    parents = torch.tensor([i - 1 for s in sizes for i in range(s)], dtype=torch.int32)
    ind = indptr_of(sizes)
    mask, _, positions, *_ = ref.build_tree(parents, ind, prefix, 64, 64)
    got_pos, got_ind, got_mask = chain_inputs(torch.tensor(sizes), prefix)
    assert torch.equal(got_ind, ind)
    assert torch.equal(got_mask, mask)
    assert torch.equal(got_pos, positions)


def test_tree_inputs_reject_bad_parents():
    with pytest.raises(ValueError, match="parents"):
        tree_inputs(torch.tensor([-1, 1], dtype=torch.int32), indptr_of([2]),
                    torch.zeros(1, dtype=torch.int32))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("sizes,prefix,heads,kv_heads", [
    ([1], [9], 4, 4), ([5, 0, 7], [10, 3, 0], 6, 2), ([64, 3], [30, 0], 4, 1),
    ([1, 1, 1], [4, 0, 12], 8, 2)])
def test_tree_attention_matches_ref(sizes, prefix, heads, kv_heads, dtype, tol):
    gen = torch.Generator().manual_seed(len(sizes) * 7 + heads)
    parents = random_parents(sizes, gen)
    ind = indptr_of(sizes)
    prefix = torch.tensor(prefix, dtype=torch.int32)
    mask, *_ = ref.build_tree(parents, ind, prefix, 64, 64)
    layers, dim, s_max = 3, 16, 100
    kv = torch.randn(layers, 2, len(sizes), s_max, kv_heads, dim, generator=gen).to(dtype)
    q = torch.randn(parents.numel(), heads, dim, generator=gen).to(dtype)
    want, _ = ref.tree_attention(q, kv, 1, prefix, ind, mask, dim ** -0.5)
    got = tree_attention(q, kv, 1, prefix, ind, mask, dim ** -0.5)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
