"""Autoregressive generation: HF greedy parity, batching, sampling, EOS, stop strings, limits."""

import pytest
import torch
from model_fixtures import hf_model, ours, random_weights, tiny_config

from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams, target_probs
from adaeagle_ext.spec.strategy import available_methods, make_strategy

CONFIG = tiny_config()
PROMPTS = [[5, 17, 3, 99, 42], list(range(1, 71)), [7], [60, 61, 62, 63, 1, 2, 3, 4, 5, 6, 7]]


@pytest.fixture(scope="module")
def weights():
    return random_weights(CONFIG, seed=11)


@pytest.fixture(scope="module")
def model(weights):
    return ours(CONFIG, weights)


def letters(ids):
    """A stand-in tokenizer: token i is one letter."""
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_greedy_matches_transformers_generate(model, weights):
    hf = hf_model(CONFIG, weights)
    for prompt in PROMPTS[:3]:
        (out,), stats = generate_ids(model, [prompt], max_new_tokens=16)
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == want
        assert out.finish_reason == "length"
        assert stats.forwards == (len(prompt) + 63) // 64 + 15


def test_batched_equals_per_prompt(model):
    batched, stats = generate_ids(model, PROMPTS, max_new_tokens=12)
    for prompt, got in zip(PROMPTS, batched, strict=True):
        (alone,), _ = generate_ids(model, [prompt], max_new_tokens=12)
        assert got.token_ids == alone.token_ids
    assert stats.new_tokens == 12 * len(PROMPTS)


def test_requests_finish_on_their_own(model):
    """EOS = a token one request produces early; the others keep going."""
    (ref0, ref1), _ = generate_ids(model, PROMPTS[:2], max_new_tokens=10)
    eos = ref0.token_ids[3]
    outs, _ = generate_ids(model, PROMPTS[:2], max_new_tokens=10, eos_ids=[eos])
    cut = ref0.token_ids.index(eos)
    assert outs[0].token_ids == ref0.token_ids[:cut] and outs[0].finish_reason == "eos"
    if eos in ref1.token_ids:
        assert outs[1].token_ids == ref1.token_ids[:ref1.token_ids.index(eos)]
    else:
        assert outs[1].token_ids == ref1.token_ids and outs[1].finish_reason == "length"


def test_max_new_tokens_zero_and_one(model):
    (out,), stats = generate_ids(model, [PROMPTS[0]], max_new_tokens=0)
    assert out.token_ids == [] and out.finish_reason == "length"
    (out,), stats = generate_ids(model, [PROMPTS[0]], max_new_tokens=1)
    assert len(out.token_ids) == 1 and stats.forwards == 1


def test_stop_string_cuts_text(model):
    (full,), _ = generate_ids(model, [PROMPTS[1]], max_new_tokens=12, decode=letters)
    stop = full.text[4:6]
    first = full.text.find(stop)
    (out,), _ = generate_ids(model, [PROMPTS[1]], max_new_tokens=12, decode=letters, stop=[stop])
    assert out.finish_reason == "stop"
    assert out.text == full.text[:first]
    assert out.token_ids == full.token_ids[:first + len(stop)]


def test_streaming_delivers_the_text(model):
    pieces = {0: [], 1: []}
    outs, _ = generate_ids(model, PROMPTS[:2], max_new_tokens=9, decode=letters,
                           stream=lambda i, t: pieces[i].append(t))
    for i, o in enumerate(outs):
        assert "".join(pieces[i]) == o.text and len(pieces[i]) > 1


def test_streaming_holds_back_partial_stop(model):
    (full,), _ = generate_ids(model, [PROMPTS[0]], max_new_tokens=10, decode=letters)
    stop = full.text[6:8] + "#"  # never completes: its prefix must still stream eventually
    pieces = []
    (out,), _ = generate_ids(model, [PROMPTS[0]], max_new_tokens=10, decode=letters,
                             stop=[stop], stream=lambda i, t: pieces.append(t))
    assert out.text == full.text and "".join(pieces) == full.text


def test_sampling_is_reproducible_with_a_seed(model):
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, seed=1234)
    a, _ = generate_ids(model, PROMPTS[:2], max_new_tokens=12, sampling=params)
    b, _ = generate_ids(model, PROMPTS[:2], max_new_tokens=12, sampling=params)
    c, _ = generate_ids(model, PROMPTS[:2], max_new_tokens=12,
                        sampling=SamplingParams(temperature=1.0, seed=99))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_sampling_follows_the_target_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    p = target_probs(logits, SamplingParams(temperature=0.7, top_k=4, top_p=0.9))
    assert p[0, 3] == 0  # outside top-k
    kept = p[0] > 0
    full = torch.softmax(logits[0] / 0.7, -1)
    order = torch.argsort(full, descending=True)
    # the kept set is the smallest top-ranked set reaching 0.9 within the top 4
    assert kept.sum() >= 1 and abs(float(p.sum()) - 1) < 1e-6
    ranked = [int(i) for i in order if int(i) != 3]
    need, mass = 0, 0.0
    top4 = full[ranked[:4]] / full[ranked[:4]].sum()
    while mass < 0.9:
        mass += float(top4[need])
        need += 1
    assert set(torch.nonzero(kept).flatten().tolist()) == set(ranked[:need])
    samples = torch.multinomial(p[0], 20000, replacement=True,
                                generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(samples, minlength=5).float() / 20000
    torch.testing.assert_close(freq, p[0], atol=0.015, rtol=0)


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, [[1]], max_new_tokens=-1)
    with pytest.raises(ValueError, match="prompts"):
        generate_ids(model, [[]])
    with pytest.raises(ValueError, match="unknown method"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="positions"):
        generate_ids(model, [[1] * 500], max_new_tokens=100)
    assert "ar" in available_methods()
