"""The EAGLE head's packed inference copy: same results as the parameters, repacked when they
change, LM-head rows sliced from a packed target, autograd untouched."""

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401
from model_fixtures import random_weights, tiny_config

from adaeagle_ext import ops
from adaeagle_ext.models.llama import build_model
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs
from adaeagle_ext.packed import PackedWeight


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, seed=3)


def run_tree(head, seed: int = 0):
    """Features and draft logits of a 7-token prefix plus a 5-node tree fed after it."""
    g = torch.Generator().manual_seed(seed)
    hidden = head.config.hidden_size
    cache = head.new_cache(1, 32)
    zero = torch.zeros(1, dtype=torch.int32)
    pos, indptr, bits = chain_inputs(torch.tensor([7]), zero)
    first = head.forward_tree(torch.randint(0, 64, (7,), generator=g),
                              torch.randn(7, hidden, generator=g), pos, cache, zero, indptr, bits)
    parents = torch.tensor([-1, 0, 0, 1, 2], dtype=torch.int32)
    pl = torch.tensor([7], dtype=torch.int32)
    ptr = torch.tensor([0, 5], dtype=torch.int32)
    t_pos, t_bits = tree_inputs(parents, ptr, pl)
    tree = head.forward_tree(torch.randint(0, 64, (5,), generator=g),
                             torch.randn(5, hidden, generator=g), t_pos, cache, pl, ptr, t_bits)
    out = torch.cat([first, tree])
    return out, head.logits(out)


def dense_run(head, seed: int = 0):
    head.packed_inference = False
    try:
        return run_tree(head, seed)
    finally:
        head.packed_inference = True


def test_fused_rope_and_cache_write_give_the_same_bits(target, monkeypatch):
    from adaeagle_ext.models import llama

    head = random_head(target, seed=6)
    calls = []
    real = ops.rope_store_kv
    monkeypatch.setattr(ops, "rope_store_kv", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = run_tree(head)
    assert len(calls) == 2  # the prefix call and the tree call took the fused op
    monkeypatch.setattr(llama, "_FUSED_ROPE", False)
    for a, b in zip(fused, run_tree(head), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bf16_values", [False, True])
def test_packed_inference_matches_the_parameters(target, bf16_values):
    head = random_head(target, seed=4)
    if bf16_values:
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(p.bfloat16().float())
    got = run_tree(head)
    layers = head.packed_layers()
    assert layers is not None
    # The default Q8_0 format needs input widths that are multiples of 32; this head's are 48.
    assert head.layer_format == "q8_0"
    want_type = ops.GGML_BF16 if bf16_values else ops.GGML_F32
    assert {w.ggml_type for w in (layers.fc, layers.qkv, layers.o, layers.gate_up,
                                  layers.down)} == {want_type}
    want = dense_run(head)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_q8_0_layers_and_the_exact_format():
    """A head whose input widths are multiples of 32 packs Q8_0 by default: close to the
    parameters (8-bit weights); ``layer_format = "exact"`` repacks and matches them."""
    config = tiny_config(vocab_size=64, hidden_size=128, num_heads=2, num_kv_heads=1,
                         intermediate_size=96)
    head = random_head(build_model(config, random_weights(config, seed=8)), seed=8)
    got = run_tree(head)
    layers = head.packed_layers()
    assert {w.ggml_type for w in (layers.fc, layers.qkv, layers.o, layers.gate_up,
                                  layers.down)} == {ops.GGML_Q8_0}
    want = dense_run(head)
    err = (got[0] - want[0]).abs().max() / want[0].abs().max()
    assert 0 < err < 0.03
    head.layer_format = "exact"
    exact = run_tree(head)
    assert head.packed_layers().fc.ggml_type == ops.GGML_F32
    torch.testing.assert_close(exact[0], want[0], atol=1e-5, rtol=1e-5)
    head.layer_format = "q4"
    with pytest.raises(ValueError, match="layer_format must be one of"):
        run_tree(head)


def test_a_head_made_under_inference_mode_drafts(target):
    with torch.inference_mode():
        head = random_head(target, seed=9)
        got = run_tree(head)
    assert head.fc.weight.is_inference()
    torch.testing.assert_close(got[0], dense_run(head)[0], atol=1e-5, rtol=1e-5)


def test_repacks_when_a_parameter_changes(target):
    head = random_head(target, seed=5)
    before = run_tree(head)[0]
    with torch.no_grad():
        head.mlp.down_proj.weight.mul_(-2.0)
        head.self_attn.q_proj.weight.add_(0.1)
    after = run_tree(head)[0]
    want = dense_run(head)[0]
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-5)


def test_lm_head_rows_are_the_packed_targets_rows():
    config = tiny_config(vocab_size=96, hidden_size=64, num_heads=4, num_kv_heads=2,
                         intermediate_size=96, tie_word_embeddings=True)
    weights = random_weights(config, seed=6)
    emb = PackedWeight.from_float(weights["model.embed_tokens.weight"], ops.GGML_Q8_0)
    target = build_model(config, weights, packed={"model.embed_tokens.weight": emb})
    vocab = torch.tensor([3, 0, 95, 17, 40])
    head = random_head(target, seed=6, draft_vocab=vocab)
    assert head.head_packed.ggml_type == ops.GGML_Q8_0
    assert torch.equal(head.head_packed.data, emb.data[vocab])
    feats = torch.randn(3, 64)
    want = feats @ emb.dequantize()[vocab].T
    torch.testing.assert_close(head.logits(feats), want, atol=1e-4, rtol=1e-4)


def test_autograd_runs_the_parameters(target):
    head = random_head(target, seed=7).requires_grad_(True)
    g = torch.Generator().manual_seed(7)
    toks, feats = torch.randint(0, 64, (6,), generator=g), torch.randn(6, 48, generator=g)
    zero = torch.zeros(1, dtype=torch.int32)
    pos, indptr, bits = chain_inputs(torch.tensor([6]), zero)

    def chain():
        return head.forward_tree(toks, feats, pos, head.new_cache(1, 8), zero, indptr, bits)

    out = chain()
    assert head.packed_layers() is None and head.logits(out).requires_grad
    out.sum().backward()
    assert head.fc.weight.grad is not None and head.mlp.down_proj.weight.grad is not None
    with torch.no_grad():
        packed = chain()
        assert head.packed_layers() is not None
    torch.testing.assert_close(packed, out.detach(), atol=1e-5, rtol=1e-5)
