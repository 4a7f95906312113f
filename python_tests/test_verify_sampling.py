"""verify_sampling: golden trees, kernel == ref.py on random trees, opcheck, bad input, and the
statistical proof of exactness (emitted tokens follow the target distribution; a broken rule
fails the same test)."""

from __future__ import annotations

import math

import pytest
import torch
from tree_fixtures import random_batch

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


def test_validate_checks_on_the_host(device):
    kwargs = {**chain_inputs(), "candidates": torch.tensor([0, 4, 0, 2])}
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with pytest.raises(RuntimeError, match="candidates of node 1 is 4, outside the vocabulary"):
        ops.verify_sampling(**kwargs, validate=True)


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


# ---------------------------------------------------------------------------------------------
# statistical exactness: over many trials the emitted tokens follow the target distribution
#
# A fixed target "model" P[a] = p(. | previous token a) and a different draft Q[a] on a small
# vocabulary. Every trial is one request of the batch: a tree drafted from Q below the root
# token 0, target rows P[token of node], draft rows the distribution each node was drawn from.
# The first emitted token must follow P[0] and the first two P[0][y1] * P[y1][y2] (when the
# round emits one token, the second is drawn directly from P[y1], as the next round would).

STAT_VOCAB = 8
ROOT_TOKEN = 0
SIBLINGS = 3  # per node, two levels: 1 + 3 + 9 nodes


def markov_models(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(STAT_VOCAB, STAT_VOCAB, generator=gen) * 1.5, dim=1)
    draft = torch.softmax(torch.randn(STAT_VOCAB, STAT_VOCAB, generator=gen) * 1.5, dim=1)
    return target, draft


def tv_bound(categories: int, trials: int, failure_prob: float = 1e-6) -> float:
    """A total-variation distance that an empirical distribution of `trials` exact samples exceeds
    with probability below `failure_prob`: E[TV] <= sqrt(K / n) / 2 (Cauchy-Schwarz), and TV moves
    by at most 1/n per sample, so McDiarmid adds sqrt(ln(1/delta) / (2n))."""
    deviation = math.sqrt(math.log(1 / failure_prob) / (2 * trials))
    return 0.5 * math.sqrt(categories / trials) + deviation


def total_variation(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    return 0.5 * float((counts / samples.numel() - probs.double()).abs().sum())


def draw_children(rows: torch.Tensor, scheme: str, gen: torch.Generator):
    """SIBLINGS children under each of T nodes whose draft distributions are rows [T, V].

    Returns (tokens [T, SIBLINGS], proposal rows [T, SIBLINGS, V]): each child's row is the
    distribution it was drawn from (for "without_replacement", conditioned on its earlier
    siblings; for "topk", the children are the top tokens and the rows are unused)."""
    if scheme == "topk":
        return rows.topk(SIBLINGS, dim=1).indices, rows[:, None].expand(-1, SIBLINGS, -1)
    tokens, proposals, remaining = [], [], rows.clone()
    for _ in range(SIBLINGS):
        proposal = remaining / remaining.sum(dim=1, keepdim=True)
        if scheme == "iid":
            proposal = rows
        token = torch.multinomial(proposal, 1, generator=gen)[:, 0]
        tokens.append(token)
        proposals.append(proposal)
        remaining = remaining.scatter(1, token[:, None], 0.0)
    return torch.stack(tokens, dim=1), torch.stack(proposals, dim=1)


def stat_trials(scheme: str, trials: int, gen: torch.Generator):
    """Inputs of one batched call: `trials` requests drafted with `scheme` ("chain", "iid",
    "without_replacement", "topk"). Returns (op arguments, mode, root-level draws)."""
    target_model, draft_model = markov_models()
    root = torch.full((trials,), ROOT_TOKEN)
    if scheme == "chain":
        first = torch.multinomial(draft_model[root], 1, generator=gen)[:, 0]
        second = torch.multinomial(draft_model[first], 1, generator=gen)[:, 0]
        tokens = torch.stack([root, first, second], dim=1)
        proposals = torch.stack([torch.zeros_like(draft_model[root]), draft_model[root],
                                 draft_model[first]], dim=1)
        parents, mode = [-1, 0, 1], CHAIN
        root_level = (first[:, None], draft_model[root][:, None])
    else:
        children, child_rows = draw_children(draft_model[root], scheme, gen)
        grand, grand_rows = draw_children(draft_model[children.flatten()], scheme, gen)
        tokens = torch.cat([root[:, None], children, grand.reshape(trials, -1)], dim=1)
        proposals = torch.cat([torch.zeros(trials, 1, STAT_VOCAB), child_rows,
                               grand_rows.reshape(trials, -1, STAT_VOCAB)], dim=1)
        parents = [-1] + [0] * SIBLINGS + [1 + i // SIBLINGS for i in range(SIBLINGS ** 2)]
        mode = TOPK if scheme == "topk" else RECURSIVE
        root_level = (children, child_rows)
    size = len(parents)
    child, sibling = links(parents, [0, size])
    args = (
        tokens.flatten(),
        target_model[tokens.flatten()].contiguous(),
        None if mode == TOPK else proposals.reshape(-1, STAT_VOCAB).contiguous(),
        child.repeat(trials),
        sibling.repeat(trials),
        torch.arange(0, (trials + 1) * size, size, dtype=torch.int32),
    )
    return args, mode, root_level, parents


def first_token_batched(p, children, child_rows, coins, final_coins, mode, residual_update):
    """The root level of the verifier, vectorised over trials in plain PyTorch: the first emitted
    token [T]. residual_update=False is the deliberately broken rule: the siblings are tested
    against the unchanged p and the correction is drawn from p (no p <- norm(max(p - q, 0)),
    no removal of rejected topk tokens)."""
    current = p.clone()
    emitted = torch.full((p.shape[0],), -1, dtype=torch.int64)
    done = torch.zeros(p.shape[0], dtype=torch.bool)
    for k in range(children.shape[1]):
        x, q = children[:, k], child_rows[:, k]
        px = current.gather(1, x[:, None])[:, 0]
        if mode == TOPK:
            accept = coins[:, k].double() * current.double().sum(dim=1) < px
        else:
            accept = coins[:, k] * q.gather(1, x[:, None])[:, 0] < px
        accept &= ~done
        emitted[accept] = x[accept]
        done |= accept
        if residual_update and mode == TOPK:
            current = current.scatter(1, x[:, None], 0.0)
        elif residual_update:
            residual = torch.clamp(current - q, min=0.0)
            mass = residual.sum(dim=1, keepdim=True)
            current = torch.where(mass > 0, residual / mass.clamp(min=1e-30), current)
    cdf = torch.cumsum(current.double(), dim=1)
    final = torch.searchsorted(cdf, (final_coins.double() * cdf[:, -1])[:, None], right=True)
    emitted[~done] = final[:, 0].clamp(max=p.shape[1] - 1)[~done]
    return emitted


def two_token_paths(out: ops.SamplingVerifyOutputs, gen: torch.Generator) -> torch.Tensor:
    """y1 * V + y2 per trial; y2 from the same round when it went on, else drawn from P[y1]."""
    target_model, _ = markov_models()
    first = out.out_tokens[:, 0]
    fresh = torch.multinomial(target_model[first], 1, generator=gen)[:, 0]
    second = torch.where(out.accept_len >= 1, out.out_tokens[:, 1], fresh)
    return first * STAT_VOCAB + second


def check_exactness(scheme: str, trials: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    args, mode, (children, child_rows), parents = stat_trials(scheme, trials, gen)
    out = ops.verify_sampling(*args, mode, 2, generator=gen)
    target_model, _ = markov_models()
    first_exact = target_model[ROOT_TOKEN]
    path_exact = (first_exact[:, None] * target_model).flatten()
    tv_first = total_variation(out.out_tokens[:, 0], first_exact)
    tv_path = total_variation(two_token_paths(out, gen), path_exact)
    bound_first, bound_path = tv_bound(STAT_VOCAB, trials), tv_bound(STAT_VOCAB ** 2, trials)
    assert tv_first < bound_first, (scheme, tv_first, bound_first)
    assert tv_path < bound_path, (scheme, tv_path, bound_path)
    assert 0.05 < float(out.accept_len.float().mean()) < 1.95  # drafts accepted and rejected

    # The same test on a plain-PyTorch root level: passes with the rule, fails without it.
    p = target_model[ROOT_TOKEN].expand(trials, -1)
    coins = torch.rand(trials, children.shape[1], generator=gen)
    final_coins = torch.rand(trials, generator=gen)
    for residual_update in (True, False):
        emitted = first_token_batched(p, children, child_rows, coins, final_coins, mode,
                                      residual_update)
        tv = total_variation(emitted, first_exact)
        if residual_update:
            assert tv < bound_first, (scheme, "plain PyTorch rule", tv, bound_first)
        else:
            assert tv > 2 * bound_first, (scheme, "broken rule", tv, bound_first)

    if scheme == "without_replacement":
        # A known pitfall fails too: siblings drawn without replacement but verified against the
        # unconditioned draft rows Q[parent token].
        tokens = args[0].view(trials, -1)
        parent_tokens = tokens[:, torch.tensor(parents).clamp(min=0)]
        _, draft_model = markov_models()
        unconditioned = draft_model[parent_tokens].reshape(-1, STAT_VOCAB).contiguous()
        out = ops.verify_sampling(args[0], args[1], unconditioned, *args[3:], mode, 2,
                                  generator=gen)
        tv = total_variation(out.out_tokens[:, 0], first_exact)
        assert tv > bound_first, (scheme, "unconditioned rows", tv, bound_first)


@pytest.mark.parametrize("scheme", ["chain", "iid", "without_replacement", "topk"])
def test_emitted_tokens_follow_the_target(scheme):
    check_exactness(scheme, 100_000, seed=17)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["chain", "iid", "without_replacement", "topk"])
def test_emitted_tokens_follow_the_target_1m(scheme):
    check_exactness(scheme, 1_000_000, seed=23)
