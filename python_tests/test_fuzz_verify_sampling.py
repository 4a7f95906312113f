"""Fuzzing ``verify_sampling``: random trees, distributions and coins match
``ref.verify_sampling`` exactly; corrupted links, out-of-range tokens, massless or non-finite
distributions and out-of-range coins raise a clear error or give well-formed output."""

import pytest
import torch
from fuzz_helpers import MUTATIONS, assert_clear_error, i32, i64, mutate, ok_or_clear_error
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture)
from tree_fixtures import indptr_of, random_parents

from adaeagle_ext import ops, ref

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
MODES = (ops.VERIFY_CHAIN, ops.VERIFY_TREE_RECURSIVE, ops.VERIFY_TOPK)


def _probs(gen, n, vocab, sparsity):
    p = torch.rand(n, vocab, generator=gen) ** 3
    p = p * (torch.rand(n, vocab, generator=gen) >= sparsity)
    p[:, 0] += 1e-3  # keep mass in every row
    return p / p.sum(-1, keepdim=True)


@st.composite
def sampling_cases(draw, hostile: bool):
    mode = draw(st.sampled_from(MODES))
    batch = draw(st.integers(0, 3))
    sizes = [draw(st.sampled_from([1, 2, 64]) | st.integers(1, 64)) for _ in range(batch)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    bushiness = 0.0 if mode == ops.VERIFY_CHAIN else draw(st.sampled_from([0.0, 0.5, 1.0]))
    parents = [p for s in sizes for p in random_parents(gen, s, bushiness)]
    indptr = indptr_of(sizes)
    arrays = ref.build_tree(i32(parents), i32(indptr), i32([0] * batch), 63, 64)
    first, nxt = arrays[3].clone(), arrays[4].clone()
    n = len(parents)
    vocab = draw(st.sampled_from([1, 2, 5, 33]))
    cand = torch.randint(0, vocab, (n,), generator=gen)
    target = _probs(gen, n, vocab, draw(st.sampled_from([0.0, 0.5, 0.9])))
    draft = None if mode == ops.VERIFY_TOPK else _probs(gen, n, vocab, 0.3)
    uniforms = torch.rand(n + batch, generator=gen)
    if hostile and n:
        what = draw(st.sampled_from(["link", "token", "zero_row", "nan", "negative", "coin",
                                     "inf"]))
        i = draw(st.integers(0, n - 1))
        if what == "link":
            links = first if draw(st.booleans()) else nxt
            links[i] = draw(st.integers(-3, 70) | st.sampled_from([-(2**31), 2**31 - 1]))
        elif what == "token":
            cand[i] = draw(st.sampled_from([-1, vocab, 2**40, -(2**62)]))
        elif what == "zero_row":
            (target if draft is None or draw(st.booleans()) else draft)[i] = 0.0
        elif what in ("nan", "negative", "inf"):
            val = {"nan": float("nan"), "negative": -0.5, "inf": float("inf")}[what]
            rows = target if draft is None or draw(st.booleans()) else draft
            rows[i, draw(st.integers(0, vocab - 1))] = val
        else:
            uniforms[draw(st.integers(0, n + batch - 1))] = draw(
                st.sampled_from([1.0, 1.5, -0.5, float("nan"), float("inf")]))
    max_depth = draw(st.integers(0, 63))
    return (cand, target, draft, first, nxt, i32(indptr), mode, max_depth), uniforms


@hypothesis.given(sampling_cases(hostile=False))
def test_valid_cases_match_ref(case):
    args, uniforms = case
    got = ops.verify_sampling(*args, uniforms=uniforms)
    want = ref.verify_sampling(*args[:6], uniforms, *args[6:])
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@hypothesis.given(sampling_cases(hostile=True))
def test_hostile_cases_raise_or_stay_well_formed(case):
    args, uniforms = case
    got = ok_or_clear_error(lambda: ops.verify_sampling(*args, uniforms=uniforms),
                            "verify_sampling")
    if got is None:
        return
    vocab, max_depth = args[1].shape[1], args[7]
    indptr = args[5]
    for b in range(indptr.numel() - 1):
        size, n_acc = int(indptr[b + 1] - indptr[b]), int(got.accept_len[b])
        assert 0 <= n_acc <= max_depth
        path = got.accept_local[b, : n_acc + 1].tolist()
        assert path[0] == 0 and all(0 <= v < size for v in path)
        assert all(a < c for a, c in zip(path, path[1:], strict=False))
        tokens = got.out_tokens[b, : n_acc + 1]
        assert bool(((tokens >= 0) & (tokens < vocab)).all()), tokens
        assert bool((got.out_tokens[b, n_acc + 1:] == -1).all())


def test_edges():
    empty = ops.verify_sampling(i64([]), torch.ones(0, 4), None, i32([]), i32([]), i32([0]),
                                ops.VERIFY_TOPK, 3)
    assert empty.accept_local.shape == (0, 4)
    one = torch.tensor([[0.0, 1.0]])
    assert_clear_error(lambda: ops.verify_sampling(
        i64([0]), one, one, i32([-1]), i32([-1]), i32([0, 0, 1]), ops.VERIFY_CHAIN, 2),
        "verify_sampling")  # empty tree
    assert_clear_error(lambda: ops.verify_sampling(
        i64([0]), torch.zeros(1, 2), None, i32([-1]), i32([-1]), i32([0, 1]), ops.VERIFY_TOPK,
        2), "verify_sampling")  # nothing to sample
    branch = (i64([0, 1, 1]), torch.full((3, 2), 0.5), torch.full((3, 2), 0.5),
              i32([1, -1, -1]), i32([-1, 2, -1]), i32([0, 3]))
    assert_clear_error(lambda: ops.verify_sampling(*branch, ops.VERIFY_CHAIN, 2),
                       "verify_sampling")  # a branching tree in chain mode
    assert_clear_error(lambda: ops.verify_sampling(*branch, 3, 2), "mode")
    assert_clear_error(lambda: ops.verify_sampling(*branch[:2], None, *branch[3:],
                                                   ops.VERIFY_CHAIN, 2), "draft_probs")
    assert_clear_error(lambda: ops.verify_sampling(*branch, ops.VERIFY_TOPK, 2), "draft_probs")
    for bad_depth in (-1, 64):
        assert_clear_error(lambda d=bad_depth: ops.verify_sampling(*branch, 1, d),
                           "verify_sampling")


def _base():
    return dict(candidates=i64([0, 1, 1]), target_probs=torch.full((3, 2), 0.5),
                draft_probs=torch.full((3, 2), 0.5), first_child=i32([1, -1, -1]),
                next_sibling=i32([-1, 2, -1]), tree_indptr=i32([0, 3]))


@pytest.mark.parametrize("arg", [*_base(), "uniforms"])
@pytest.mark.parametrize("kind", [*MUTATIONS, "size"])
def test_malformed_tensors_are_named(arg, kind):
    args = _base()
    uniforms = torch.rand(4)
    t = uniforms if arg == "uniforms" else args[arg]
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    if arg == "uniforms":
        uniforms = bad
    else:
        args[arg] = bad
    names = ["verify_sampling"]
    if not (kind == "size" and arg in ("candidates", "tree_indptr")):
        names.append(arg)
    assert_clear_error(lambda: ops.verify_sampling(
        *args.values(), ops.VERIFY_TREE_RECURSIVE, 2, uniforms=uniforms), *names)


@pytest.mark.parametrize("field", ops.SamplingVerifyOutputs._fields)
@pytest.mark.parametrize("kind", ["dtype", "rank_up", "size"])
def test_malformed_outputs_are_named(field, kind):
    call = dict(mode=ops.VERIFY_TREE_RECURSIVE, max_depth=2, uniforms=torch.rand(4))
    out = ops.verify_sampling(*_base().values(), **call)
    t = getattr(out, field)
    bad = torch.cat([t, t[:1]]) if kind == "size" else mutate(t, kind)
    out = out._replace(**{field: bad})
    assert_clear_error(lambda: ops.verify_sampling(*_base().values(), **call, out=out),
                       "verify_sampling")
    scratch = torch.empty(1, 2, 3)
    assert_clear_error(lambda: ops.verify_sampling(*_base().values(), **call, scratch=scratch),
                       "scratch")
