"""Helpers shared by the ``aded`` strategy tests: tri-gram tables for tiny models, and one
default-model run checked against ``ar``."""

import numpy as np

from adaeagle_ext.drafters.trigram import count_trigrams
from adaeagle_ext.spec.aded import is_default_target
from adaeagle_ext.spec.generate import generate_ids


def random_table(seed: int, vocab: int = 8, docs: int = 40, length: int = 30):
    rng = np.random.default_rng(seed)
    return count_trigrams([rng.integers(0, vocab, size=length) for _ in range(docs)], vocab)


def own_output_table(model, seed: int, vocab: int = 8):
    """A table counted over the model's own greedy continuations of random prompts (so that
    long drafts get accepted), none of them a test prompt."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab, size=4).tolist() for _ in range(12)]
    outs, _ = generate_ids(model, prompts, max_new_tokens=30)
    return count_trigrams([p + o.token_ids for p, o in zip(prompts, outs, strict=True)], vocab)


def run_on_default_model(strategy, max_new_tokens: int = 64):
    """(``strategy``'s stats, whether its tokens equal ``ar``'s) on one chat prompt of the
    default model in fp32."""
    from adaeagle_ext.api import load

    pipe = load(None, dtype="float32", threads=2, progress=False)
    assert is_default_target(pipe.model)
    prompt = pipe.encode([{"role": "user", "content": "List the days of the week."}])
    eos = pipe._eos_ids()
    (want,), _ = generate_ids(pipe.model, [prompt], max_new_tokens=max_new_tokens, eos_ids=eos)
    (got,), stats = generate_ids(pipe.model, [prompt], method=strategy,
                                 max_new_tokens=max_new_tokens, eos_ids=eos)
    return stats, got.token_ids == want.token_ids
