"""Checks on the real default model (SmolLM2-135M-Instruct Q4_1), fetched on first use."""

import pytest
import torch

pytestmark = pytest.mark.model

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


@pytest.fixture(scope="module")
def pipe():
    """The default model dequantised to float32 (what transformers computes)."""
    from adaeagle_ext.api import load

    return load(None, dtype="float32", weights="convert", threads=2, progress=False)


@pytest.fixture(scope="module")
def native():
    """The default model on its packed GGUF weights (the shipped configuration)."""
    from adaeagle_ext.api import load

    return load(None, dtype="float32", threads=2, progress=False)


@pytest.fixture(scope="module")
def hf(pipe):
    import transformers

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**pipe.config.to_hf_dict()))
    sd = {k: v for k, v in pipe.model.state_dict().items() if k != "lm_head.weight"}
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    return model.eval()


def test_weights_equal_transformers_gguf_conversion(pipe):
    """transformers' own GGUF reader (with its q/k un-permutation) gives the same tensors."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        shell = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**pipe.config.to_hf_dict()))
    theirs = load_gguf_checkpoint(str(pipe.source), return_tensors=True,
                                  model_to_load=shell)["tensors"]
    ours = pipe.model.state_dict()
    assert len(theirs) == 272
    for name, t in theirs.items():
        assert torch.equal(ours[name], torch.as_tensor(t).float()), name
    assert pipe.checkpoint.packed["model.layers.0.mlp.up_proj.weight"].ggml_type.name == "Q4_1"


def test_logits_and_greedy_match_transformers(pipe, hf):
    for prompt in PROMPTS:
        ids = pipe.encode(prompt, chat=False)
        with torch.no_grad():
            want = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                               eos_token_id=None, pad_token_id=2)[0, len(ids):].tolist()
        res = pipe.generate(ids, max_new_tokens=8, eos=False)
        assert res.token_ids == want, prompt
    ids = pipe.encode(PROMPTS[0], chat=False)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0, -1]
    from adaeagle_ext.models.tree_inputs import chain_inputs

    cache = pipe.model.new_cache(1, 32)
    pos, ind, mask = chain_inputs(torch.tensor([len(ids)]), cache.lens)
    got, _ = pipe.model(torch.tensor(ids), pos, ind, mask, cache.lens, cache)
    torch.testing.assert_close(got[-1], want, atol=1e-3, rtol=1e-4)


def test_chat_batch_and_stop(pipe):
    chats = [[{"role": "user", "content": "What is 2+2?"}], "Name a color.", PROMPTS[2]]
    res = pipe.generate(chats[:2], chat=True, max_new_tokens=12)
    assert all(r.text.strip() for r in res)
    stopped = pipe.generate(PROMPTS[2], chat=False, max_new_tokens=16, stop=[","])
    assert "," not in stopped.text


def test_a_string_is_a_chat_turn_unless_chat_is_false(pipe):
    chat = pipe.encode("Name a color.")
    assert chat == pipe.encode("Name a color.", chat=True)
    assert chat == pipe.encode([{"role": "user", "content": "Name a color."}])
    raw = pipe.encode("Name a color.", chat=False)
    assert len(raw) < len(chat) and raw != chat


def test_cli_generate(capsys):
    from adaeagle_ext.cli import main

    assert main(["generate", "--prompt", "Hi!", "--max-new-tokens", "6", "--threads", "2",
                 "--stream", "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "tokens/s" in err


def test_cli_generate_act_quant(capsys, monkeypatch):
    import adaeagle_ext.api
    from adaeagle_ext.cli import main
    from adaeagle_ext.drafters.eagle_head import packed_lm_head

    seen = []
    load = adaeagle_ext.api.load

    def spy(*args, **kwargs):
        pipe = load(*args, **kwargs)
        seen.append((kwargs["act_quant"], packed_lm_head(pipe.model).act_quant))
        return pipe

    monkeypatch.setattr(adaeagle_ext.api, "load", spy)
    assert main(["generate", "--prompt", "Hi!", "--max-new-tokens", "4", "--threads", "2",
                 "--dtype", "bfloat16", "--act-quant", "8"]) == 0
    assert seen == [(8, 8)]
    assert "tokens/s" in capsys.readouterr().err


def test_native_weights_match_dequantised(pipe, native):
    """Packed Q4_1/Q8_0 layers on ops.linear compute the same model as the dequantised
    float32 weights (up to the summation order)."""
    assert native.model.packed and not pipe.model.packed
    for prompt in PROMPTS:
        ids = pipe.encode(prompt, chat=False)
        want = pipe.generate(ids, max_new_tokens=8, eos=False).token_ids
        assert native.generate(ids, max_new_tokens=8, eos=False).token_ids == want, prompt
    from adaeagle_ext.models.tree_inputs import chain_inputs

    ids = torch.tensor(pipe.encode(PROMPTS[1], chat=False))
    logits = []
    for p in (pipe, native):
        cache = p.model.new_cache(1, 32)
        pos, ind, mask = chain_inputs(torch.tensor([ids.numel()]), cache.lens)
        logits.append(p.model(ids, pos, ind, mask, cache.lens, cache)[0])
    torch.testing.assert_close(logits[1], logits[0], atol=2e-3, rtol=1e-4)


def test_native_model_runs_all_layers_in_one_op(native, monkeypatch):
    """The shipped configuration takes ``ops.decoder_layers``, with the modules' bits."""
    from adaeagle_ext.models import llama
    from adaeagle_ext.models.tree_inputs import chain_inputs

    model = native.model
    assert model._decoder_layers_args(torch.empty(1, 576), model.new_cache(1, 1).buf)
    ids = torch.tensor(native.encode(PROMPTS[0], chat=False))
    outs = []
    for fused in (True, False):
        monkeypatch.setattr(llama, "_FUSED_LAYERS", fused)
        cache = model.new_cache(1, 32)
        pos, ind, mask = chain_inputs(torch.tensor([ids.numel()]), cache.lens)
        outs.append([*model(ids, pos, ind, mask, cache.lens, cache), cache.buf])
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
