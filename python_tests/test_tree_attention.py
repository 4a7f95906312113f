"""tree_attention and merge_attn_states: goldens, chain == causal SDPA, batch invariance,
random trees against ref.py, full == merge(prefix, tree), opcheck, bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tree_fixtures import random_batch, random_parents

from adaeagle_ext import ops, ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def golden_problem(device):
    """One request, prefix 1, tree 0 -> {1, 2} (root with two children), D=64, H=2, Hkv=1.

    Cache rows: 0 prefix, 1 root, 2 node 1, 3 node 2. Every query of head 0 is e0 and head 1 is
    zero; keys are multiples of e0 with scores 0, ln 3, 0, ln 2 (scale 1); values v_r = 12 e_r.
    """
    dim = 64
    cache = torch.zeros(1, 2, 1, 5, 1, dim)
    cache[0, 0, 0, :4, 0, 0] = torch.tensor([0.0, math.log(3), 0.0, math.log(2)])
    for r in range(4):
        cache[0, 1, 0, r, 0, r] = 12.0
    cache[0, :, 0, 4] = float("nan")  # past prefix + T: never read
    q = torch.zeros(3, 2, dim)
    q[:, 0, 0] = 1.0
    mask = torch.tensor([0b001, 0b011, 0b101], dtype=torch.int64)
    return (q.to(device), cache.to(device), i32([1]).to(device), i32([0, 3]).to(device),
            mask.to(device))


GOLDEN = {
    # mode: (out[:, head, :4] rows per node, lse per node and head)
    ref.ATTN_FULL: (
        [[[3, 9, 0, 0], [6, 6, 0, 0]],  # root sees rows 0, 1: weights 1/4, 3/4 | 1/2, 1/2
         [[2.4, 7.2, 2.4, 0], [4, 4, 4, 0]],  # rows 0, 1, 2: 1/5, 3/5, 1/5 | thirds
         [[2, 6, 0, 4], [4, 4, 0, 4]]],  # rows 0, 1, 3: 1/6, 3/6, 2/6 | thirds
        [[math.log(4), math.log(2)], [math.log(5), math.log(3)], [math.log(6), math.log(3)]],
    ),
    ref.ATTN_PREFIX_ONLY: (
        [[[12, 0, 0, 0]] * 2] * 3,
        [[0.0, 0.0]] * 3,
    ),
    ref.ATTN_TREE_ONLY: (
        [[[0, 12, 0, 0], [0, 12, 0, 0]],
         [[0, 9, 3, 0], [0, 6, 6, 0]],  # rows 1, 2: 3/4, 1/4 | halves
         [[0, 7.2, 0, 4.8], [0, 6, 0, 6]]],  # rows 1, 3: 3/5, 2/5 | halves
        [[math.log(3), 0.0], [math.log(4), math.log(2)], [math.log(5), math.log(2)]],
    ),
}


@pytest.mark.parametrize("mode", sorted(GOLDEN))
def test_golden(device, mode):
    q, cache, prefix, indptr, mask = golden_problem(device)
    out, lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask, 1.0, mode, return_lse=True)
    want_out, want_lse = GOLDEN[mode]
    torch.testing.assert_close(out[:, :, :4].cpu(), torch.tensor(want_out, dtype=torch.float32),
                               atol=2e-5, rtol=1e-5)
    assert torch.all(out[:, :, 4:] == 0)
    torch.testing.assert_close(lse.cpu(), torch.tensor(want_lse), atol=2e-6, rtol=1e-6)


def test_row_without_keys_is_zero_with_neg_inf_lse(device):
    q, cache, _, indptr, mask = golden_problem(device)
    q = q.clone().fill_(float("nan"))  # no key: q must not matter either
    out, lse = ops.tree_attention(q, cache, 0, i32([0]).to(device), indptr, mask, 1.0,
                                  ref.ATTN_PREFIX_ONLY, return_lse=True)
    assert torch.all(out == 0)
    assert torch.all(lse == float("-inf"))


def make_problem(gen, batch, heads, hkv, dim, dtype, max_size=64, bushiness=0.5,
                 layers=2, device="cpu"):
    parents, indptr, prefix = random_batch(gen, batch, max_size, bushiness)
    if batch > 1:
        prefix[1] = 0
    mask = ref.build_tree(parents, indptr, prefix, 63, 64)[0]
    sizes = indptr.diff()
    s_max = int((prefix + sizes).max()) + 3
    cache = torch.randn(layers, 2, batch, s_max, hkv, dim, generator=gen)
    for b in range(batch):  # rows past prefix + T hold garbage that must never be read
        cache[:, :, b, int(prefix[b] + sizes[b]):] = float("nan")
    q = torch.randn(parents.numel(), heads, dim, generator=gen)
    to = dict(device=device)
    return (q.to(dtype=dtype, **to), cache.to(dtype=dtype, **to), prefix.to(**to),
            indptr.to(**to), mask.to(**to))


def check_close(out, lse, want_out, want_lse, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().float(), want_out.float(), atol=tol, rtol=tol)
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(want_lse))
    finite = torch.isfinite(want_lse)
    torch.testing.assert_close(lse.cpu()[finite], want_lse[finite], atol=1e-4, rtol=1e-5)


HEADS = [(9, 3), (4, 4), (8, 2)]


@pytest.mark.parametrize("heads,hkv", HEADS)
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference(device, heads, hkv, dim, dtype):
    gen = torch.Generator().manual_seed(heads * 1000 + dim + len(str(dtype)))
    for batch in (1, 4):
        q, cache, prefix, indptr, mask = make_problem(gen, batch, heads, hkv, dim, dtype,
                                                      max_size=40, device=device)
        for mode in (ref.ATTN_FULL, ref.ATTN_PREFIX_ONLY, ref.ATTN_TREE_ONLY):
            out, lse = ops.tree_attention(q, cache, 1, prefix, indptr, mask, mode=mode,
                                          return_lse=True)
            want_out, want_lse = ref.tree_attention(q.cpu(), cache.cpu(), 1, prefix.cpu(),
                                                    indptr.cpu(), mask.cpu(), dim ** -0.5, mode)
            check_close(out, lse, want_out, want_lse, dtype)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_large_trees_and_prefixes(device, batch):
    # 64-node trees (bit 63 set), prefixes crossing several 256-key chunks.
    gen = torch.Generator().manual_seed(batch)
    prefix = torch.randint(0, 300, (batch,), generator=gen, dtype=torch.int32)
    prefix[0] = 700
    sizes = torch.full((batch,), 64, dtype=torch.int32)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int32), sizes.cumsum(0).to(torch.int32)])
    parents = torch.cat([torch.tensor([-1] + list(range(63)), dtype=torch.int32)] * batch)
    mask = ref.build_tree(parents, indptr, prefix, 63, 64)[0]
    cache = torch.randn(1, 2, batch, 800, 3, 64, generator=gen)
    q = torch.randn(64 * batch, 9, 64, generator=gen)
    out, lse = ops.tree_attention(q.to(device), cache.to(device), 0, prefix.to(device),
                                  indptr.to(device), mask.to(device), 0.1, return_lse=True)
    want_out, want_lse = ref.tree_attention(q, cache, 0, prefix, indptr, mask, 0.1)
    check_close(out, lse, want_out, want_lse, torch.float32)


def test_chain_equals_causal_sdpa(device):
    gen = torch.Generator().manual_seed(7)
    heads, hkv, dim, prefix, size = 9, 3, 64, 290, 37
    cache = torch.randn(1, 2, 1, prefix + size, hkv, dim, generator=gen)
    q_all = torch.randn(prefix + size, heads, dim, generator=gen)
    want = F.scaled_dot_product_attention(
        q_all.transpose(0, 1), cache[0, 0, 0].transpose(0, 1), cache[0, 1, 0].transpose(0, 1),
        is_causal=True, enable_gqa=True,
    ).transpose(0, 1)[prefix:]
    parents = i32([-1] + list(range(size - 1)))
    indptr, prefix_lens = i32([0, size]), i32([prefix])
    mask = ref.build_tree(parents, indptr, prefix_lens, 63, 64)[0]
    out = ops.tree_attention(q_all[prefix:].to(device), cache.to(device), 0,
                             prefix_lens.to(device), indptr.to(device), mask.to(device))
    torch.testing.assert_close(out.cpu(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariance_on_cpu(dtype):
    """A chain verified in one call equals one-token calls bit for bit, and a request's rows do
    not depend on the other requests of the batch."""
    gen = torch.Generator().manual_seed(3)
    heads, hkv, dim, prefix, size = 9, 3, 64, 250, 23  # the chain crosses the 256-key chunk
    cache = torch.randn(1, 2, 2, prefix + size + 40, hkv, dim, generator=gen).to(dtype)
    q = torch.randn(size, heads, dim, generator=gen).to(dtype)
    chain = torch.tensor([(1 << (i + 1)) - 1 for i in range(size)], dtype=torch.int64)
    whole = ops.tree_attention(q, cache, 0, i32([prefix]), i32([0, size]), chain)
    for i in range(size):
        one = ops.tree_attention(q[i : i + 1], cache, 0, i32([prefix + i]), i32([0, 1]),
                                 torch.ones(1, dtype=torch.int64))
        assert torch.equal(one[0], whole[i]), i
    # the same request next to another one (in cache slot 1)
    other = torch.randn(30, heads, dim, generator=gen).to(dtype)
    both = ops.tree_attention(torch.cat([q, other]), cache, 0, i32([prefix, 40]),
                              i32([0, size, size + 30]),
                              torch.cat([chain, torch.ones(30, dtype=torch.int64)]))
    assert torch.equal(both[:size], whole)



@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [8, 9, 13, 24])
def test_long_chains_equal_one_token_calls_on_cpu(dim, dtype, size):
    """From 24 query rows (8 tokens x a GQA group of 3) the CPU kernel runs whole prefix blocks
    with the rows in the vector lanes; one-token calls never do. Each row must still equal its
    one-token call bit for bit: 24, 27, 39 and 72 rows (full tiles of 24 rows and remainders of
    8 and 16), over a prefix of several key chunks."""
    gen = torch.Generator().manual_seed(size * dim)
    heads, hkv, prefix = 9, 3, 700
    cache = torch.randn(1, 2, 1, prefix + size, hkv, dim, generator=gen).to(dtype)
    q = torch.randn(size, heads, dim, generator=gen).to(dtype)
    chain = torch.tensor([(1 << (i + 1)) - 1 for i in range(size)], dtype=torch.int64)
    whole, lse = ops.tree_attention(q, cache, 0, i32([prefix]), i32([0, size]), chain,
                                    return_lse=True)
    want, want_lse = ref.tree_attention(q, cache, 0, i32([prefix]), i32([0, size]), chain,
                                        dim ** -0.5)
    check_close(whole, lse, want, want_lse, dtype)
    for i in range(size):
        one, one_lse = ops.tree_attention(q[i : i + 1], cache, 0, i32([prefix + i]),
                                          i32([0, 1]), torch.ones(1, dtype=torch.int64),
                                          return_lse=True)
        assert torch.equal(one[0], whole[i]) and torch.equal(one_lse[0], lse[i]), i


def root_to_node_paths(parents: list[int]) -> list[list[int]]:
    paths: list[list[int]] = []
    for node, parent in enumerate(parents):
        paths.append((paths[parent] if parent >= 0 else []) + [node])
    return paths


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tree_rows_equal_their_paths_as_chains_on_cpu(dim, dtype):
    """Every node's row equals, bit for bit, the last row of its root-to-node path verified as
    a chain (its K/V rows copied to consecutive cache rows): tree verification == plain
    autoregressive decoding. Prefixes straddle key blocks (64) and the 256-key chunks."""
    gen = torch.Generator().manual_seed(dim + len(str(dtype)))
    heads, hkv, layers = 9, 3, 2
    for prefix, size, bushiness in ((60, 20, 0.6), (63, 64, 0.3), (66, 40, 0.8), (70, 9, 1.0),
                                    (250, 30, 0.5), (255, 64, 0.4), (256, 12, 0.7),
                                    (260, 50, 0.5), (0, 33, 0.5)):
        parents = random_parents(gen, size, bushiness)
        paths = root_to_node_paths(parents)
        indptr, prefix_lens = i32([0, size]), i32([prefix])
        mask = ref.build_tree(i32(parents), indptr, prefix_lens, 63, 64)[0]
        cache = torch.randn(layers, 2, 1, prefix + size + 5, hkv, dim, generator=gen).to(dtype)
        q = torch.randn(size, heads, dim, generator=gen).to(dtype)
        tree_out = ops.tree_attention(q, cache, 1, prefix_lens, indptr, mask)

        # One request per node: the node's path as a chain after the same prefix.
        chains = cache[:, :, :1].repeat(1, 1, size, 1, 1, 1)
        chain_q, chain_mask, chain_indptr = [], [], [0]
        for node, path in enumerate(paths):
            rows = [prefix + a for a in path]
            chains[:, :, node, prefix : prefix + len(path)] = cache[:, :, 0, rows]
            chain_q.append(q[path])
            chain_mask += [(1 << (k + 1)) - 1 for k in range(len(path))]
            chain_indptr.append(chain_indptr[-1] + len(path))
        chain_out = ops.tree_attention(torch.cat(chain_q), chains, 1, i32([prefix] * size),
                                       i32(chain_indptr), torch.tensor(chain_mask))
        for node in range(size):
            assert torch.equal(tree_out[node], chain_out[chain_indptr[node + 1] - 1]), \
                (prefix, size, node, paths[node])


def test_portable_path_without_avx2():
    """The kernel without the AVX2 code path (ADAEAGLE_NO_AVX2=1) against the reference."""
    script = (
        "import sys, torch\n"
        "sys.path.insert(0, 'python_tests')\n"
        "from test_tree_attention import make_problem, check_close\n"
        "from adaeagle_ext import ops, ref\n"
        "gen = torch.Generator().manual_seed(4)\n"
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    q, cache, prefix, indptr, mask = make_problem(gen, 2, 9, 3, 64, dtype)\n"
        "    out, lse = ops.tree_attention(q, cache, 1, prefix, indptr, mask, return_lse=True)\n"
        "    want = ref.tree_attention(q, cache, 1, prefix, indptr, mask, 0.125)\n"
        "    check_close(out, lse, *want, dtype)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, ADAEAGLE_NO_AVX2="1", PYTHONPATH=os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_full_equals_merged_parts(device):
    gen = torch.Generator().manual_seed(11)
    for dtype in (torch.float32, torch.bfloat16):
        q, cache, prefix, indptr, mask = make_problem(gen, 3, 8, 2, 64, dtype, device=device)
        full, full_lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask, return_lse=True)
        pre, pre_lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask,
                                          mode=ops.ATTN_PREFIX_ONLY, return_lse=True)
        tree, tree_lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask,
                                            mode=ops.ATTN_TREE_ONLY, return_lse=True)
        if dtype == torch.float32:
            merged, merged_lse = ops.merge_attn_states(pre, pre_lse, tree, tree_lse)
        else:  # merge the fp32 parts so only the final rounding differs
            merged, merged_lse = ops.merge_attn_states(pre.float(), pre_lse, tree.float(),
                                                       tree_lse)
        check_close(merged, merged_lse, full.cpu(), full_lse.cpu(), dtype)


def test_out_and_lse_buffers(device):
    q, cache, prefix, indptr, mask = golden_problem(device)
    out = torch.full_like(q, 5.0)
    lse = torch.full(q.shape[:2], 5.0, device=device)
    got_out, got_lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask, 1.0, out=out,
                                          lse=lse)
    assert got_out is out and got_lse is lse
    want_out, want_lse = ops.tree_attention(q, cache, 0, prefix, indptr, mask, 1.0,
                                            return_lse=True)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    assert isinstance(ops.tree_attention(q, cache, 0, prefix, indptr, mask), torch.Tensor)


def test_empty_batch(device):
    q = torch.zeros(0, 2, 64, device=device)
    cache = torch.zeros(1, 2, 1, 4, 1, 64, device=device)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    out = ops.tree_attention(q, cache, 0, i32([]).to(device), i32([0]).to(device), empty)
    assert out.shape == (0, 2, 64)


# ---------------------------------------------------------------------------------------------
# merge_attn_states


def test_merge_golden(device):
    inf = float("inf")
    out_a = torch.tensor([[[4.0, 4.0]], [[1.0, 2.0]], [[float("nan"), 1.0]], [[7.0, 7.0]]])
    out_b = torch.tensor([[[8.0, 0.0]], [[float("nan"), 3.0]], [[5.0, 6.0]], [[9.0, 9.0]]])
    lse_a = torch.tensor([[0.0], [1.5], [-inf], [-inf]])
    lse_b = torch.tensor([[math.log(3)], [-inf], [2.5], [-inf]])
    out, lse = ops.merge_attn_states(out_a.to(device), lse_a.to(device), out_b.to(device),
                                     lse_b.to(device))
    # 1/4, 3/4 | a only (b's NaN ignored) | b only (a's NaN ignored) | both empty
    assert out.cpu().tolist() == [[[7.0, 1.0]], [[1.0, 2.0]], [[5.0, 6.0]], [[0.0, 0.0]]]
    torch.testing.assert_close(lse.cpu(), torch.tensor([[math.log(4)], [1.5], [2.5], [-inf]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_matches_reference(device, dtype):
    gen = torch.Generator().manual_seed(5)
    out_a = torch.randn(7, 3, 40, generator=gen).to(dtype)
    out_b = torch.randn(7, 3, 40, generator=gen).to(dtype)
    lse_a = torch.randn(7, 3, generator=gen) * 3
    lse_b = torch.randn(7, 3, generator=gen) * 3
    lse_a[0, 0] = lse_b[1, 1] = float("-inf")
    lse_a[2, 2] = lse_b[2, 2] = float("-inf")
    want_out, want_lse = ref.merge_attn_states(out_a, lse_a, out_b, lse_b)
    out, lse = ops.merge_attn_states(out_a.to(device), lse_a.to(device), out_b.to(device),
                                     lse_b.to(device))
    check_close(out, lse, want_out, want_lse, dtype)


def test_merge_in_place(device):
    gen = torch.Generator().manual_seed(6)
    out_a = torch.randn(5, 2, 64, generator=gen).to(device)
    out_b = torch.randn(5, 2, 64, generator=gen).to(device)
    lse_a = torch.randn(5, 2, generator=gen).to(device)
    lse_b = torch.randn(5, 2, generator=gen).to(device)
    want_out, want_lse = ops.merge_attn_states(out_a, lse_a, out_b, lse_b)
    got_out, got_lse = ops.merge_attn_states(out_a, lse_a, out_b, lse_b, out=out_a, lse=lse_a)
    assert got_out is out_a and got_lse is lse_a
    assert torch.equal(out_a, want_out) and torch.equal(lse_a, want_lse)


# ---------------------------------------------------------------------------------------------
# opcheck and bad input


def test_opcheck():
    q, cache, prefix, indptr, mask = golden_problem("cpu")
    out, lse = torch.empty_like(q), torch.empty(3, 2)
    torch.library.opcheck(torch.ops.adaeagle.tree_attention,
                          (q, cache, 0, prefix, indptr, mask, 1.0, 0, out, lse))
    torch.library.opcheck(torch.ops.adaeagle.tree_attention,
                          (q, cache, 0, prefix, indptr, mask, 1.0, 2, out, None))
    a, b = torch.randn(3, 2, 64), torch.randn(3, 2, 64)
    torch.library.opcheck(torch.ops.adaeagle.merge_attn_states,
                          (a, torch.randn(3, 2), b, torch.randn(3, 2), torch.empty_like(a),
                           torch.empty(3, 2)))


def bad_problem(**overrides):
    args = dict(q=torch.zeros(3, 2, 64), cache=torch.zeros(2, 2, 1, 8, 1, 64), layer=0,
                prefix=i32([2]), indptr=i32([0, 3]), mask=torch.ones(3, dtype=torch.int64))
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,message", [
    (dict(q=torch.zeros(3, 2, 80), cache=torch.zeros(2, 2, 1, 8, 1, 80)), "64 or 128"),
    (dict(q=torch.zeros(3, 3, 64), cache=torch.zeros(2, 2, 1, 8, 2, 64)), "multiple"),
    (dict(q=torch.zeros(3, 2, 64, dtype=torch.bfloat16)), "must match q dtype"),
    (dict(q=torch.zeros(3, 2, 64, dtype=torch.float64),
          cache=torch.zeros(2, 2, 1, 8, 1, 64, dtype=torch.float64)), "float32, bfloat16"),
    (dict(layer=2), "layer must be in"),
    (dict(layer=-1), "layer must be in"),
    (dict(prefix=i32([6])), "exceeds the cache length"),
    (dict(prefix=i32([-1])), ">= 0"),
    (dict(indptr=i32([0, 2])), "tree_indptr\\[-1\\]"),
    (dict(mask=torch.ones(3, dtype=torch.int32)), "mask_bits must be Long"),
    (dict(prefix=i32([1, 1])), "prefix_lens.size"),
    (dict(cache=torch.zeros(2, 2, 1, 8, 1, 64)[:, :, :, :4]), "contiguous"),
    (dict(cache=torch.zeros(2, 3, 1, 8, 1, 64)), "kv_cache must be"),
])
def test_bad_input(overrides, message):
    a = bad_problem(**overrides)
    with pytest.raises(RuntimeError, match=message):
        ops.tree_attention(a["q"], a["cache"], a["layer"], a["prefix"], a["indptr"], a["mask"])


def test_bad_tree_size_and_mode():
    q = torch.zeros(65, 1, 64)
    cache = torch.zeros(1, 2, 1, 70, 1, 64)
    mask = torch.ones(65, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="65 tree tokens, at most 64"):
        ops.tree_attention(q, cache, 0, i32([0]), i32([0, 65]), mask)
    with pytest.raises(RuntimeError, match="mode must be"):
        ops.tree_attention(q[:3], cache, 0, i32([0]), i32([0, 3]), mask[:3], mode=3)
    with pytest.raises(RuntimeError, match="lse must be Float"):
        ops.tree_attention(q[:3], cache, 0, i32([0]), i32([0, 3]), mask[:3],
                           lse=torch.zeros(3, 1, dtype=torch.float64))


@pytest.mark.parametrize("indptr,prefix,message", [
    ([0, 3], [6], "exceeds the cache length"),
    ([0, 2], [0], "from 0 to q.size"),
    ([0, 70, 3], [0, 0], "expected 0 to 64"),
])
def test_host_validation_for_cuda(indptr, prefix, message):
    # What validate=True runs before a CUDA launch (the CUDA kernel cannot raise).
    with pytest.raises(RuntimeError, match=message):
        ops._validate_tree_batch(3, 8, i32(prefix), i32(indptr))
    ops._validate_tree_batch(3, 8, i32([2]), i32([0, 3]))


def test_merge_bad_input():
    a = torch.zeros(3, 2, 8)
    lse = torch.zeros(3, 2)
    with pytest.raises(RuntimeError, match="one shape"):
        ops.merge_attn_states(a, lse, torch.zeros(3, 2, 4), lse)
    with pytest.raises(RuntimeError, match="lse_b.size"):
        ops.merge_attn_states(a, lse, a, torch.zeros(3, 1))
    with pytest.raises(RuntimeError, match="out_b must be"):
        ops.merge_attn_states(a, lse, a.bfloat16(), lse)
