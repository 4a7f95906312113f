"""Generation at its limits, for every method (ar, chain, eagle, eagle2 on tiny fp32 models):
each case either emits exactly ``ar``'s tokens / text / finish reason, or fails with a clear
ValueError before any target forward."""

import pytest
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.api import Pipeline
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams

MAX_POS = 256


@pytest.fixture(scope="module")
def model():
    return tiny_target(seed=11, max_pos=MAX_POS)


@pytest.fixture(scope="module")
def methods(model):
    head = random_head(model, seed=11)
    return ["ar", EagleChain("4", head=head), EagleTree("small", head=head),
            Eagle2("top_k=3,depth=4,total_tokens=10", head=head)]


def counting_forwards(model, monkeypatch) -> list:
    """Patches ``model.forward`` to record each call (so a test can assert no work was done)."""
    calls = []
    real = model.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


def same_as_ar(model, methods, prompts, **kw):
    want, _ = generate_ids(model, prompts, **kw)
    for method in methods[1:]:
        got, stats = generate_ids(model, prompts, method=method, **kw)
        for w, g in zip(want, got, strict=True):
            assert (g.token_ids, g.text, g.finish_reason) == \
                (w.token_ids, w.text, w.finish_reason), method.name
    return want


def test_prompt_longer_than_the_context_fails_before_work(model, methods, monkeypatch):
    calls = counting_forwards(model, monkeypatch)
    for method in methods:
        with pytest.raises(ValueError, match="positions"):
            generate_ids(model, [[1] * (MAX_POS + 5)], method=method, max_new_tokens=1)
        with pytest.raises(ValueError, match="positions"):  # prompt fits, the budget does not
            generate_ids(model, [[1] * 200, [2]], method=method, max_new_tokens=80)
        with pytest.raises(ValueError, match="max_seq_len"):
            generate_ids(model, [[1] * 20], method=method, max_new_tokens=10, max_seq_len=25)
    assert not calls


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 9])
def test_max_new_tokens_at_the_cache_end(model, methods, max_new):
    """The cache holds exactly what the call needs, so the last drafts must shrink."""
    prompts = [[i % 8 for i in range(40)], [3, 1]]
    want, _ = generate_ids(model, prompts, max_new_tokens=max_new)
    for method in methods[1:]:
        need = 40 + max_new + method.max_tree_nodes
        got, _ = generate_ids(model, prompts, method=method, max_new_tokens=max_new,
                              max_seq_len=need)
        assert [g.token_ids for g in got] == [w.token_ids for w in want]
        assert all(len(g.token_ids) == max_new and g.finish_reason == "length" for g in got)


def test_eos_inside_an_accepted_draft(model, methods):
    prompts = [[5, 1, 3, 7, 4], [2, 2, 6]]
    free, _ = generate_ids(model, prompts, max_new_tokens=24)
    accepted_multi = False
    for pos in (1, 6):
        eos = free[0].token_ids[pos]
        want = same_as_ar(model, methods, prompts, max_new_tokens=24, eos_ids=[eos])
        assert want[0].finish_reason == "eos" and eos not in want[0].token_ids
    for method in methods[1:]:
        _, stats = generate_ids(model, prompts, method=method, max_new_tokens=24)
        accepted_multi |= max(stats.accepted_per_step) >= 3
    assert accepted_multi, "no multi-token step: EOS was never inside an accepted draft"


def test_empty_prompts_fail_before_work(model, methods, monkeypatch):
    calls = counting_forwards(model, monkeypatch)
    for method in methods:
        for prompts in ([], [[]], [[1, 2], []]):
            with pytest.raises(ValueError, match="empty"):
                generate_ids(model, prompts, method=method)
    pipe = Pipeline(model, None)
    for prompt in ([], [[]], [[3], []]):
        with pytest.raises(ValueError, match="empty"):
            pipe.generate(prompt, max_new_tokens=4)
    assert not calls


def test_token_ids_outside_the_vocabulary_fail_before_work(model, methods, monkeypatch):
    calls = counting_forwards(model, monkeypatch)
    vocab = model.config.vocab_size
    for method in methods:
        for bad in (-1, vocab, 2**40):
            with pytest.raises(ValueError, match="vocabulary"):
                generate_ids(model, [[1, 2], [3, bad]], method=method)
    assert not calls


def test_batch_of_very_different_lengths(model, methods):
    """1, 3 and 150 tokens (three prefill chunks) decoded together: ar's tokens, and each
    request as if alone."""
    prompts = [[4], [1, 2, 3], [(7 * i) % 8 for i in range(150)]]
    want = same_as_ar(model, methods, prompts, max_new_tokens=20)
    for prompt, w in zip(prompts, want, strict=True):
        (alone,), _ = generate_ids(model, [prompt], method=methods[2], max_new_tokens=20)
        assert alone.token_ids == w.token_ids


def decode(ids):
    """A fake tokenizer: every token is two characters, so a stop string can start in one
    token (and one draft) and end in the next."""
    return "".join(("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")[i] for i in ids)


def test_stop_strings_spanning_tokens_and_drafts(model, methods):
    prompts = [[5, 1, 3, 7, 4], [2, 2, 6], [0, 1]]
    free, _ = generate_ids(model, prompts, max_new_tokens=24, decode=decode)
    for start in (3, 9):  # odd offsets: each stop string spans a token boundary
        stop = [free[0].text[start:start + 3], free[1].text[start + 2:start + 4]]
        streamed = {}

        def stream(i, text, streamed=streamed):
            streamed[i] = streamed.get(i, "") + text

        want = same_as_ar(model, methods, prompts, max_new_tokens=24, decode=decode, stop=stop)
        assert want[0].finish_reason == "stop" and stop[0] not in want[0].text
        for method in methods:
            streamed.clear()
            got, _ = generate_ids(model, prompts, method=method, max_new_tokens=24,
                                  decode=decode, stop=stop, stream=stream)
            assert [streamed.get(i, "") for i in range(3)] == [g.text for g in got]


@pytest.mark.parametrize("params", [
    dict(temperature=-0.5), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1), dict(top_p=float("nan")),
    dict(top_k=-1), dict(top_k=2.5),
])
def test_invalid_sampling_params_fail_before_work(model, methods, monkeypatch, params):
    calls = counting_forwards(model, monkeypatch)
    name = next(iter(params))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**params)
    pipe = Pipeline(model, None)
    for method in methods:
        with pytest.raises(ValueError, match=name):
            pipe.generate([1, 2, 3], method=method, max_new_tokens=4, **params)
    assert not calls


def test_invalid_lengths_fail_before_work(model, methods, monkeypatch):
    calls = counting_forwards(model, monkeypatch)
    for method in methods:
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate_ids(model, [[1]], method=method, max_new_tokens=-1)
    assert not calls
    for method in methods:  # zero new tokens: nothing generated, finish reason "length"
        out, _ = generate_ids(model, [[1, 2]], method=method, max_new_tokens=0)
        assert out[0].token_ids == [] and out[0].finish_reason == "length"


def test_limits_hold_when_sampling(model, methods):
    """At T > 0 tokens differ by seed, but every limit still holds for every method."""
    prompts = [[5, 1, 3], [2] * 70]
    params = SamplingParams(temperature=0.9, top_k=5, top_p=0.9, seed=3)
    for method in methods:
        for max_new in (1, 7):
            out, _ = generate_ids(model, prompts, method=method, max_new_tokens=max_new,
                                  sampling=params, eos_ids=[7], decode=decode, stop=["cd"])
            for o in out:
                assert len(o.token_ids) <= max_new and 7 not in o.token_ids
                assert "cd" not in o.text
                if o.finish_reason == "length":
                    assert len(o.token_ids) == max_new
