"""The runtime's logits against HF transformers' LlamaForCausalLM on the same weights, and
tree forwards against path forwards."""

import pytest
import torch
from model_fixtures import hf_model, ours, random_weights, tiny_config

from adaeagle_ext import ref
from adaeagle_ext.models.kv_compact import kv_compact_
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs

CONFIGS = {
    "gqa_untied": dict(),
    "tied_mha": dict(tie_word_embeddings=True, num_kv_heads=6),
    "biases": dict(attention_bias=True, attention_out_bias=True),
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "rope_llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 64}),
    "head_dim": dict(head_dim=12),
}


def run_chunks(model, cache, tokens, chunks, b=0, batch=1):
    """Feed ``tokens`` of request b through the model in consecutive chains; all logits."""
    out, start = [], 0
    for size in chunks:
        sizes = torch.zeros(batch, dtype=torch.int64)
        sizes[b] = size
        prefix = cache.lens.clone()
        pos, ind, mask = chain_inputs(sizes, prefix)
        logits, _ = model(tokens[start:start + size], pos, ind, mask, prefix, cache)
        cache.lens[b] += size
        out.append(logits)
        start += size
    return torch.cat(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers_fp32(name):
    config = tiny_config(**CONFIGS[name])
    weights = random_weights(config, seed=len(name))
    model, hf = ours(config, weights), hf_model(config, weights)
    tokens = torch.randint(0, config.vocab_size, (90,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens[None]).logits[0]
    cache = model.new_cache(1, 128)
    # Prefill in chunks (the first one is the 64-node limit), then one-token decodes.
    got = run_chunks(model, cache, tokens, [64, 20, 1, 1, 3, 1])
    assert want.abs().max() > 1.0  # the weights make logits spread out
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_logits_match_transformers_bf16():
    config = tiny_config()
    weights = random_weights(config, seed=3)
    model = ours(config, weights, torch.bfloat16)
    hf = hf_model(config, weights, torch.bfloat16)
    tokens = torch.randint(0, config.vocab_size, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(tokens[None]).logits[0].float()
    cache = model.new_cache(1, 64)
    got = run_chunks(model, cache, tokens, [30, 1, 9])
    assert model.dtype == torch.bfloat16 and cache.buf.dtype == torch.bfloat16
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.05, err


def test_hidden_is_final_normed():
    config = tiny_config()
    weights = random_weights(config)
    model, hf = ours(config, weights), hf_model(config, weights)
    tokens = torch.arange(12)
    with torch.no_grad():
        want = hf(tokens[None], output_hidden_states=True).hidden_states[-1][0]
    cache = model.new_cache(1, 16)
    pos, ind, mask = chain_inputs(torch.tensor([12]), cache.lens)
    _, hidden = model(tokens, pos, ind, mask, cache.lens, cache)
    torch.testing.assert_close(hidden, want, atol=1e-5, rtol=1e-5)


def test_tree_forward_equals_each_path():
    """Logits of a batched tree forward equal those of each root-to-leaf path run alone."""
    config = tiny_config()
    model = ours(config, random_weights(config, seed=5))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 101, (n,), generator=gen) for n in (7, 12)]
    parent_lists = [[-1, 0, 0, 1, 1, 2, 4, 4, 0], [-1, 0, 1, 1, 0, 4]]
    cache = model.new_cache(2, 64)
    for b, p in enumerate(prompts):
        run_chunks(model, cache, p, [len(p)], b=b, batch=2)
    parents = torch.tensor([x for ps in parent_lists for x in ps], dtype=torch.int32)
    ind = torch.tensor([0, 9, 15], dtype=torch.int32)
    tree_tokens = torch.randint(0, 101, (15,), generator=gen)
    prefix = cache.lens.clone()
    pos, mask = tree_inputs(parents, ind, prefix)
    tree_logits, tree_hidden = model(tree_tokens, pos, ind, mask, prefix, cache)

    _, _, _, _, _, leaf_paths, num_leaves = ref.build_tree(parents, ind, prefix, 8, 8)
    checked = 0
    for b in range(2):
        for leaf in range(int(num_leaves[b])):
            path = [int(i) for i in leaf_paths[b, leaf] if i >= 0]
            solo = model.new_cache(1, 64)
            seq = torch.cat([prompts[b], tree_tokens[int(ind[b]) + torch.tensor(path)]])
            logits = run_chunks(model, solo, seq, [len(seq)])[len(prompts[b]):]
            torch.testing.assert_close(tree_logits[int(ind[b]) + torch.tensor(path)], logits,
                                       atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked == 5 + 3


def test_kv_compact_matches_ref():
    gen = torch.Generator().manual_seed(0)
    config = tiny_config()
    from adaeagle_ext.models.kv_cache import KVCache

    cache = KVCache(config, 3, 40)
    cache.buf.copy_(torch.randn(cache.buf.shape, generator=gen))
    prefix = torch.tensor([5, 0, 20], dtype=torch.int32)
    accept_local = torch.tensor([[0, 2, 5, -1], [0, 1, 2, 3], [0, -1, -1, -1]], dtype=torch.int32)
    accept_len = torch.tensor([2, 3, 0], dtype=torch.int32)
    want, want_lens = ref.kv_compact(cache.buf, accept_local, accept_len, prefix)
    kv_compact_(cache, accept_local, accept_len, prefix)
    assert torch.equal(cache.lens, want_lens)
    for b in range(3):  # rows below the new lengths must agree
        n = int(want_lens[b])
        assert torch.equal(cache.buf[:, :, b, :n], want[:, :, b, :n])


def test_forward_rejects_bad_inputs():
    config = tiny_config()
    model = ours(config, random_weights(config))
    cache = model.new_cache(1, 8)
    pos, ind, mask = chain_inputs(torch.tensor([9]), cache.lens)
    with pytest.raises(ValueError, match="cache holds 8"):
        model(torch.zeros(9, dtype=torch.int64), pos, ind, mask, cache.lens, cache)
    with pytest.raises(ValueError, match="must all be"):
        model(torch.zeros(3, dtype=torch.int64), pos, ind, mask, cache.lens, cache)
