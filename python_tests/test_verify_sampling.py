"""verify_sampling: golden trees, kernel == ref.py on random trees, opcheck, bad input.

The statistical exactness tests live in test_verify_sampling_exactness.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch

from adaeagle_ext import ops, ref

CHAIN, RECURSIVE, TOPK = ops.VERIFY_CHAIN, ops.VERIFY_TREE_RECURSIVE, ops.VERIFY_TOPK


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def f32(values):
    return torch.tensor(values, dtype=torch.float32)


def links(parents, indptr):
    """first_child, next_sibling of a ragged batch of parent arrays (via the reference)."""
    _, _, _, child, sibling, _, _ = ref.build_tree(
        i32(parents), i32(indptr), i32([0] * (len(indptr) - 1)), 63, 64
    )
    return child, sibling


def run(device, parents, indptr, tokens, target, draft, coins, mode, max_depth):
    """ops.verify_sampling on `device` with literal inputs; returns plain lists."""
    child, sibling = links(parents, indptr)
    out = ops.verify_sampling(
        torch.tensor(tokens).to(device), f32(target).to(device),
        None if draft is None else f32(draft).to(device), child.to(device), sibling.to(device),
        i32(indptr).to(device), mode, max_depth, uniforms=f32(coins).to(device),
    )
    return [t.cpu().tolist() for t in out]


def test_golden_chain_all_accepted(device):
    # p == q at every node: every draft passes its ratio test; the bonus token comes from the last
    # node's row [0.1, 0.2, 0.3, 0.4] at u = 0.5 (cumulative 0.1, 0.3, 0.6: index 2).
    target = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]
    draft = [[0.0] * 4, target[0], target[1]]
    path, n_acc, tokens = run(device, [-1, 0, 1], [0, 3], [9, 2, 1], target, draft,
                              [0.0, 0.99, 0.99, 0.5], CHAIN, 2)
    assert (path, n_acc, tokens) == ([[0, 1, 2]], [2], [[2, 1, 2]])


@pytest.mark.parametrize("final_coin, token", [(0.7, 2), (0.5, 0)])
def test_golden_chain_rejection_samples_residual(device, final_coin, token):
    # p(1)/q(1) = 0.1/0.6, coin 0.5 rejects; residual max(p - q, 0) = [0.3, 0, 0.2, 0]:
    # u * 0.5 = 0.35 lands on token 2, 0.25 on token 0.
    target = [[0.4, 0.1, 0.3, 0.2], [0.25] * 4]
    draft = [[0.0] * 4, [0.1, 0.6, 0.1, 0.2]]
    out = run(device, [-1, 0], [0, 2], [0, 1], target, draft, [0.0, 0.5, final_coin], CHAIN, 1)
    assert out == [[[0, -1]], [0], [[token, -1]]]


def test_golden_recursive_second_sibling_accepted_by_the_residual(device):
    # Sibling 1 (token 1) is rejected, leaving p' = [0.6, 0, 0.4, 0]. Sibling 2 (token 2,
    # q2(2) = 0.5) passes 0.7 * 0.5 < p'(2) = 0.4, though it would fail against the original
    # p(2) = 0.3. Node 2 is a leaf: the bonus comes from its row, all mass on token 3.
    target = [[0.4, 0.1, 0.3, 0.2], [0.25] * 4, [0.0, 0.0, 0.0, 1.0]]
    draft = [[0.0] * 4, [0.1, 0.6, 0.1, 0.2], [0.25, 0.0, 0.5, 0.25]]
    out = run(device, [-1, 0, 0], [0, 3], [0, 1, 2], target, draft, [0.0, 0.5, 0.7, 0.3],
              RECURSIVE, 1)
    assert out == [[[0, 2]], [1], [[2, 3]]]
    # Coin 0.9 rejects sibling 2 too: max(p' - q2, 0) = [0.35, 0, 0, 0] leaves only token 0.
    out = run(device, [-1, 0, 0], [0, 3], [0, 1, 2], target, draft, [0.0, 0.5, 0.9, 0.3],
              RECURSIVE, 1)
    assert out == [[[0, -1]], [0], [[0, -1]]]


def test_golden_topk_rejection_removes_the_token(device):
    target = [[0.5, 0.3, 0.2, 0.0], [0.25] * 4, [0.0, 0.0, 1.0, 0.0]]
    # Coin 0.6 rejects token 0 (p = 0.5); then p(1) = 0.3 / 0.5 = 0.6 > 0.55 accepts token 1.
    out = run(device, [-1, 0, 0], [0, 3], [0, 0, 1], target, None, [0.0, 0.6, 0.55, 0.9],
              TOPK, 3)
    assert out == [[[0, 2, -1, -1]], [1], [[1, 2, -1, -1]]]
    # Coin 0.7 rejects token 1 as well: only token 2 is left, whatever the final coin.
    for final_coin in (0.0, 0.99):
        out = run(device, [-1, 0, 0], [0, 3], [0, 0, 1], target, None,
                  [0.0, 0.6, 0.7, final_coin], TOPK, 3)
        assert out == [[[0, -1, -1, -1]], [0], [[2, -1, -1, -1]]]


def test_golden_topk_skips_a_repeated_token(device):
    # Token 0 is rejected, its repeat is skipped (coin 0 would accept it otherwise), token 2 is
    # rejected (0.99 * 0.5 >= 0.2): only token 1 remains.
    target = [[0.5, 0.3, 0.2, 0.0]] + [[0.25] * 4] * 3
    out = run(device, [-1, 0, 0, 0], [0, 4], [0, 0, 0, 2], target, None,
              [0.0, 0.6, 0.0, 0.99, 0.5], TOPK, 1)
    assert out == [[[0, -1]], [0], [[1, -1]]]


def test_golden_max_depth_stops_with_a_bonus(device):
    # Three drafts would all pass (p == q) but max_depth = 1: the bonus comes from node 1's row.
    target = [[0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.25] * 4, [0.25] * 4]
    draft = [[0.0] * 4, target[0], target[1], target[2]]
    out = run(device, [-1, 0, 1, 2], [0, 4], [0, 3, 1, 2], target, draft,
              [0.0, 0.5, 0.5, 0.5, 0.5], CHAIN, 1)
    assert out == [[[0, 1]], [1], [[3, 1]]]


def test_golden_zero_probability_token_is_never_accepted(device):
    # p(1) = 0: rejected even with coin 0. Residual [0.25, 0, 0.25, 0]; u * 0.5 = 0.125 -> 0.
    target = [[0.5, 0.0, 0.5, 0.0], [0.25] * 4]
    draft = [[0.0] * 4, [0.25, 0.5, 0.25, 0.0]]
    out = run(device, [-1, 0], [0, 2], [0, 1], target, draft, [0.0, 0.0, 0.25], RECURSIVE, 1)
    assert out == [[[0, -1]], [0], [[0, -1]]]


def test_golden_ragged_batch(device):
    # Request 0: a lone root (bonus from its row at u = 0.9: token 3); request 1: one draft
    # accepted (p == q) and the bonus from its row (all mass on token 0).
    target = [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]]
    draft = [[0.0] * 4, [0.0] * 4, target[1]]
    out = run(device, [-1, -1, 0], [0, 1, 3], [5, 5, 2], target, draft,
              [0.0, 0.0, 0.3, 0.9, 0.1], RECURSIVE, 2)
    assert out == [[[0, -1, -1], [0, 1, -1]], [0, 1], [[3, -1, -1], [2, 0, -1]]]


# ---------------------------------------------------------------------------------------------
# random trees: the kernel takes the same decisions as ref.py


def random_case(gen: torch.Generator, mode: int, batch: int, vocab: int, max_size: int = 16):
    """Random trees with target rows (a third of them top-3 truncated, so zeros occur), draft rows
    that resemble the parent's target row, and candidates drawn from their draft rows (topk:
    from a blend, so repeats and zero-probability candidates occur)."""
    parents, indptr, _ = random_batch(gen, batch, max_size, 0.0 if mode == CHAIN else 0.6)
    child, sibling = links(parents.tolist(), indptr.tolist())
    n = parents.numel()
    logits = torch.randn(n, vocab, generator=gen) * 2.0
    target = torch.softmax(logits, dim=1)
    truncate = torch.rand(n, generator=gen) < 0.33
    kth = target.topk(min(3, vocab), dim=1).values[:, -1:]
    target = torch.where(truncate[:, None] & (target < kth), 0.0, target)
    target = target / target.sum(dim=1, keepdim=True)
    starts = torch.repeat_interleave(indptr[:-1].long(), indptr.diff().long())
    parent_rows = target[(starts + parents.long().clamp(min=0))]
    noise = torch.softmax(torch.randn(n, vocab, generator=gen) * 2.0, dim=1)
    draft = 0.6 * parent_rows + 0.4 * noise
    draft = draft / draft.sum(dim=1, keepdim=True)
    if mode == TOPK:
        candidates = torch.multinomial(0.5 * parent_rows + 0.5 / vocab, 1, generator=gen)[:, 0]
        draft = None
    else:
        candidates = torch.multinomial(draft, 1, generator=gen)[:, 0]
    uniforms = torch.rand(n + batch, generator=gen)
    return candidates, target, draft, child, sibling, indptr, uniforms


def assert_matches_ref(device, case, mode, max_depth):
    candidates, target, draft, child, sibling, indptr, uniforms = case
    expected = ref.verify_sampling(candidates, target, draft, child, sibling, indptr, uniforms,
                                   mode, max_depth)
    got = ops.verify_sampling(
        *(None if t is None else t.to(device)
          for t in (candidates, target, draft, child, sibling, indptr)),
        mode, max_depth, uniforms=uniforms.to(device),
    )
    for name, e, g in zip(ops.SamplingVerifyOutputs._fields, expected, got, strict=True):
        assert torch.equal(e, g.cpu()), name
    return expected


@pytest.mark.parametrize("mode", [CHAIN, RECURSIVE, TOPK])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("vocab", [5, 100])
def test_matches_reference(device, mode, batch, vocab):
    gen = torch.Generator().manual_seed(1000 * mode + 10 * batch + vocab)
    accepted = 0
    for max_depth in (1, 2, 63):
        for _ in range(2):
            case = random_case(gen, mode, batch, vocab)
            accepted += int(assert_matches_ref(device, case, mode, max_depth)[1].sum())
    assert accepted > 0  # the cases exercise acceptance as well as rejection


@pytest.mark.parametrize("mode", [CHAIN, RECURSIVE, TOPK])
def test_matches_reference_large_vocabulary(device, mode):
    gen = torch.Generator().manual_seed(7 + mode)
    assert_matches_ref(device, random_case(gen, mode, 2, 49152, max_size=8), mode, 63)


def test_seeded_generator_reproduces():
    case = random_case(torch.Generator().manual_seed(3), RECURSIVE, 4, 50)
    args = case[:6]
    n, batch = case[0].numel(), case[5].numel() - 1
    first = ops.verify_sampling(*args, RECURSIVE, 63,
                                generator=torch.Generator().manual_seed(11))
    second = ops.verify_sampling(*args, RECURSIVE, 63,
                                 generator=torch.Generator().manual_seed(11))
    explicit = ops.verify_sampling(
        *args, RECURSIVE, 63, uniforms=torch.rand(n + batch,
                                                   generator=torch.Generator().manual_seed(11)))
    for a, b, c in zip(first, second, explicit, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_out_variant_writes_given_buffers():
    candidates, target, draft, child, sibling, indptr, uniforms = random_case(
        torch.Generator().manual_seed(5), RECURSIVE, 3, 20)
    out = ops.SamplingVerifyOutputs(
        torch.full((3, 4), 99, dtype=torch.int32), torch.full((3,), 99, dtype=torch.int32),
        torch.full((3, 4), 99, dtype=torch.int64))
    scratch = torch.empty(3, 2, 20)
    result = ops.verify_sampling(candidates, target, draft, child, sibling, indptr, RECURSIVE, 3,
                                 uniforms=uniforms, out=out, scratch=scratch)
    assert result.out_tokens.data_ptr() == out.out_tokens.data_ptr()
    expected = ref.verify_sampling(candidates, target, draft, child, sibling, indptr, uniforms,
                                   RECURSIVE, 3)
    for e, g in zip(expected, out, strict=True):
        assert torch.equal(e, g)
    with pytest.raises(ValueError, match="expected max_depth \\+ 1 = 3"):
        ops.verify_sampling(candidates, target, draft, child, sibling, indptr, RECURSIVE, 2,
                            uniforms=uniforms, out=out)


def test_empty_batch(device):
    empty_f = torch.empty(0, 7, device=device)
    out = ops.verify_sampling(
        torch.empty(0, dtype=torch.int64, device=device), empty_f, empty_f,
        i32([]).to(device), i32([]).to(device), i32([0]).to(device), RECURSIVE, 4)
    assert out.out_tokens.shape == (0, 5)


@pytest.mark.parametrize("mode", [CHAIN, RECURSIVE, TOPK])
def test_opcheck(mode):
    candidates, target, draft, child, sibling, indptr, uniforms = random_case(
        torch.Generator().manual_seed(mode), mode, 3, 30)
    batch = indptr.numel() - 1
    torch.library.opcheck(
        torch.ops.adaeagle.verify_sampling,
        (candidates, target, draft, child, sibling, indptr, uniforms, mode,
         torch.empty(batch, 5, dtype=torch.int32), torch.empty(batch, dtype=torch.int32),
         torch.empty(batch, 5, dtype=torch.int64), torch.empty(batch, 2, 30)),
    )


# ---------------------------------------------------------------------------------------------
# bad input


def chain_inputs():
    """A valid 2-request chain batch (V = 4) as a dict of wrapper arguments."""
    return dict(
        candidates=torch.tensor([0, 1, 0, 2]),
        target_probs=torch.full((4, 4), 0.25),
        draft_probs=torch.full((4, 4), 0.25),
        first_child=i32([1, -1, 1, -1]),
        next_sibling=i32([-1, -1, -1, -1]),
        tree_indptr=i32([0, 2, 4]),
        mode=CHAIN,
        max_depth=1,
        uniforms=f32([0.0, 0.5, 0.0, 0.5, 0.5, 0.5]),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(draft_probs=None), "draft_probs is required in mode 0 \\(chain\\)"),
        (dict(draft_probs=None, mode=RECURSIVE), "draft_probs is required in mode 1"),
        (dict(mode=TOPK), "draft_probs must be None in mode 2"),
        (dict(mode=3), "mode must be 0 \\(chain\\), 1 \\(tree_recursive\\) or 2 \\(topk\\)"),
        (dict(draft_probs=torch.full((4, 5), 0.2)), "draft_probs.size\\(1\\) must be 4"),
        (dict(target_probs=torch.full((4, 4), 0.25, dtype=torch.float64)),
         "target_probs must be Float"),
        (dict(draft_probs=torch.full((4, 4), 0.25, dtype=torch.bfloat16)),
         "draft_probs must be Float"),
        (dict(candidates=torch.tensor([0, 1, 0, 2], dtype=torch.int32)), "candidates must be Long"),
        (dict(target_probs=torch.full((5, 4), 0.25)), "target_probs.size\\(0\\) must be 4"),
        (dict(target_probs=torch.full((4, 4, 1), 0.25)), "target_probs must have 2 dimension"),
        (dict(target_probs=torch.full((4, 8), 0.25)[:, ::2]), "target_probs must be contiguous"),
        (dict(first_child=i32([1, -1, 1])), "first_child.size\\(0\\) must be 4"),
        (dict(next_sibling=torch.tensor([-1, -1, -1, -1])), "next_sibling must be Int"),
        (dict(uniforms=f32([0.5] * 4)), "uniforms.size\\(0\\) must be 6"),
        (dict(uniforms=torch.full((6,), 0.5, dtype=torch.float64)), "uniforms must be Float"),
        (dict(max_depth=64), "accept_local.size\\(1\\) = max_depth \\+ 1 must be in \\[1, 64\\]"),
        (dict(first_child=i32([-1, 1, -1, -1]), next_sibling=i32([-1, -1, 2, -1]),
              tree_indptr=i32([0, 1, 4])),
         "request 1: node 1 has a next sibling 2, but mode 0 \\(chain\\) allows at most one"),
        (dict(candidates=torch.tensor([0, 4, 0, 2])),
         "request 0: candidates of node 1 is 4, outside the vocabulary \\[0, 4\\)"),
        (dict(first_child=i32([1, 0, 1, -1]), max_depth=2), "request 0: node 1 links to 0"),
        (dict(first_child=i32([2, -1, 1, -1])), "request 0: node 0 links to 2"),
        (dict(tree_indptr=i32([0, 0, 4])), "request 0: tree has 0 nodes"),
        (dict(tree_indptr=i32([0, 2, 3])), "tree_indptr\\[-1\\] must equal"),
        (dict(tree_indptr=i32([1, 2, 4])), "tree_indptr\\[0\\] must be 0"),
        (dict(target_probs=torch.tensor([[0.25] * 4, [0.25] * 4, [0.0] * 4, [0.25] * 4]),
              uniforms=f32([0.0, 0.5, 0.0, 0.99, 0.5, 0.5])),
         "request 1: the distribution to sample at node 0 has no positive mass"),
    ],
)
def test_bad_input_raises(change, message):
    kwargs = {**chain_inputs(), **change}
    with pytest.raises(RuntimeError, match=message):
        ops.verify_sampling(**kwargs)
