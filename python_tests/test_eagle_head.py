"""The EAGLE head: cached tree forward vs the training forward, save / load, shape checks."""

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, seed=1)


def test_cached_chain_equals_training_forward(target):
    head = random_head(target, seed=0)
    g = torch.Generator().manual_seed(0)
    lens = [23, 70, 5]
    toks = [torch.randint(0, 64, (n,), generator=g) for n in lens]
    feats = [torch.randn(n, 48, generator=g) for n in lens]
    cache = head.new_cache(3, 80)
    done = [0, 0, 0]
    got = [[], [], []]
    while any(d < n for d, n in zip(done, lens, strict=True)):  # chunks of <= 64 like refresh
        sizes = torch.tensor([min(64, n - d) for d, n in zip(done, lens, strict=True)])
        start = torch.tensor(done, dtype=torch.int32)
        pos, indptr, bits = chain_inputs(sizes, start)
        t = torch.cat([toks[b][done[b]:done[b] + sizes[b]] for b in range(3)])
        f = torch.cat([feats[b][done[b]:done[b] + sizes[b]] for b in range(3)])
        out = head.forward_tree(t, f, pos, cache, start, indptr, bits)
        for b in range(3):
            got[b].append(out[int(indptr[b]):int(indptr[b + 1])])
            done[b] += int(sizes[b])
    for b in range(3):
        want = head.forward_train(toks[b][None], feats[b][None])[0]
        torch.testing.assert_close(torch.cat(got[b]), want, atol=1e-5, rtol=1e-5)


def test_tree_nodes_see_only_their_ancestors(target):
    """Each node of a tree fed over a prefix equals the training forward of its own path."""
    head = random_head(target, seed=1)
    g = torch.Generator().manual_seed(1)
    prefix = 9
    p_tok = torch.randint(0, 64, (prefix,), generator=g)
    p_feat = torch.randn(prefix, 48, generator=g)
    parents = [-1, 0, 0, 1, 1, 2, 4, 3]  # a tree hanging after the prefix
    n = len(parents)
    t_tok = torch.randint(0, 64, (n,), generator=g)
    t_feat = torch.randn(n, 48, generator=g)
    cache = head.new_cache(1, 32)
    pos, indptr, bits = chain_inputs(torch.tensor([prefix]), torch.zeros(1, dtype=torch.int32))
    head.forward_tree(p_tok, p_feat, pos, cache, torch.zeros(1, dtype=torch.int32), indptr, bits)
    pl = torch.tensor([prefix], dtype=torch.int32)
    tree_ptr = torch.tensor([0, n], dtype=torch.int32)
    t_pos, t_bits = tree_inputs(torch.tensor(parents, dtype=torch.int32), tree_ptr, pl)
    # feed in two calls: the first four nodes, then the rest (earlier K/V reused)
    head.forward_tree(t_tok[:4], t_feat[:4], t_pos[:4], cache, pl,
                      torch.tensor([0, 4], dtype=torch.int32), t_bits[:4])
    late = head.forward_tree(t_tok[4:], t_feat[4:], t_pos[4:], cache, pl, tree_ptr, t_bits,
                             torch.arange(4, n))
    for i in range(4, n):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        path = path[::-1]
        toks = torch.cat([p_tok, t_tok[path]])[None]
        feats = torch.cat([p_feat, t_feat[path]])[None]
        want = head.forward_train(toks, feats)[0, -1]
        torch.testing.assert_close(late[i - 4], want, atol=1e-5, rtol=1e-5)


def test_unrolled_steps_equal_drafting_a_chain(target):
    """Unrolled step d of row i is the head run on the true pairs 0..i followed by its own
    steps 1..d, i.e. what drafting token d+1 after pair i computes."""
    head = random_head(target, seed=3)
    g = torch.Generator().manual_seed(3)
    n, depth = 12, 3
    toks = torch.randint(0, 64, (2, n), generator=g)
    feats = torch.randn(2, n, 48, generator=g)
    preds = head.forward_train_unrolled(toks, feats, depth)
    assert len(preds) == depth
    torch.testing.assert_close(preds[0], head.forward_train(toks, feats))
    for b in range(2):
        for i in range(n - depth + 1):
            chain_toks, chain_feats = list(toks[b, :i + 1]), list(feats[b, :i + 1])
            for d in range(1, depth):
                chain_toks.append(toks[b, i + d])
                chain_feats.append(preds[d - 1][b, i])
                want = head.forward_train(torch.stack(chain_toks)[None],
                                          torch.stack(chain_feats)[None])[0, -1]
                torch.testing.assert_close(preds[d][b, i], want, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(target, tmp_path):
    head = random_head(target, seed=2, draft_vocab=torch.tensor([0, 5, 7, 63]))
    path = tmp_path / "head.safetensors"
    head.save(path)
    back = EagleHead.load(path, target)
    for (k, a), (_, b) in zip(head.state_dict().items(), back.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert back.draft_vocab.tolist() == [0, 5, 7, 63]
    assert back.matches(target)
    feats = torch.randn(3, 48)
    torch.testing.assert_close(back.logits(feats), head.logits(feats))
    head.save(tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    small = EagleHead.load(tmp_path / "bf16.safetensors", target)
    assert small.fc.weight.dtype == torch.float32  # bound to the fp32 target
    torch.testing.assert_close(small.fc.weight, head.fc.weight, atol=2e-2, rtol=1e-2)


def test_mismatched_target_is_a_clear_error(target, tmp_path):
    path = tmp_path / "head.safetensors"
    random_head(target).save(path)
    other = tiny_target(vocab=80, seed=1)
    with pytest.raises(ValueError, match=r"head\.safetensors.*vocab_size: head 64 vs target 80"):
        EagleHead.load(path, other)
    same_shape = tiny_target(vocab=64, seed=2)
    assert not EagleHead.load(path).matches(same_shape)


def test_not_a_head_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="x.safetensors: not an EAGLE head"):
        EagleHead.load(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        EagleHead.load(tmp_path / "missing.safetensors")
