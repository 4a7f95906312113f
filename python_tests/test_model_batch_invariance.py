"""On packed weights the runtime is batch-invariant: verifying T tokens in one forward gives
bit-identical logits to T one-token steps, in float32 and bfloat16 (the basis of exact
losslessness at every precision)."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import random_weights, tiny_config

from adaeagle_ext import ops
from adaeagle_ext.models.llama import build_model
from adaeagle_ext.models.tree_inputs import chain_inputs, tree_inputs
from adaeagle_ext.packed import PackedWeight


def packed_model(dtype, ggml_type, seed=0):
    config = tiny_config(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=192,
                         vocab_size=96, tie_word_embeddings=True)
    weights = random_weights(config, seed)
    packed = {k: PackedWeight.from_float(w, ggml_type) for k, w in weights.items()
              if w.dim() == 2}
    floats = {k: w for k, w in weights.items() if k not in packed}
    model = build_model(config, floats, dtype, packed)
    assert model.packed
    return model


def run_chain(model, cache, tokens, prefix):
    """Forward of a chain in chunks of at most 64 tokens; returns the last chunk's outputs."""
    for start in range(0, tokens.numel(), 64):
        chunk = tokens[start:start + 64]
        lens = torch.tensor([prefix + start], dtype=torch.int32)
        pos, indptr, bits = chain_inputs(torch.tensor([chunk.numel()]), lens)
        out = model(chunk, pos, indptr, bits, lens, cache)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ggml_type", [ops.GGML_Q4_1, ops.GGML_Q8_0])
def test_verify_pass_equals_one_token_steps(dtype, ggml_type):
    model = packed_model(dtype, ggml_type)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 96, (70,), generator=gen)  # past one 64-key attention block
    draft = torch.randint(0, 96, (16,), generator=gen)

    together = model.new_cache(1, 128)
    run_chain(model, together, prompt, 0)
    logits_all, hidden_all = run_chain(model, together, draft, prompt.numel())

    stepwise = model.new_cache(1, 128)
    run_chain(model, stepwise, prompt, 0)
    for i in range(draft.numel()):
        logits, hidden = run_chain(model, stepwise, draft[i:i + 1], prompt.numel() + i)
        assert torch.equal(logits[0], logits_all[i]), f"row {i}"
        assert torch.equal(hidden[0], hidden_all[i]), f"row {i}"


def test_tree_rows_equal_their_paths_alone():
    model = packed_model(torch.float32, ops.GGML_Q4_1)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 96, (20,), generator=gen)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2], dtype=torch.int32)
    tokens = torch.randint(0, 96, (6,), generator=gen)
    cache = model.new_cache(1, 64)
    run_chain(model, cache, prompt, 0)
    prefix = torch.tensor([20], dtype=torch.int32)
    indptr = torch.tensor([0, 6], dtype=torch.int32)
    pos, bits = tree_inputs(parents, indptr, prefix)
    tree_logits, _ = model(tokens, pos, indptr, bits, prefix, cache)
    for leaf_path in ([0, 1, 3], [0, 1, 4], [0, 2, 5]):
        alone = model.new_cache(1, 64)
        run_chain(model, alone, prompt, 0)
        logits, _ = run_chain(model, alone, tokens[leaf_path], 20)
        for row, node in enumerate(leaf_path):
            assert torch.equal(logits[row], tree_logits[node]), (leaf_path, node)
