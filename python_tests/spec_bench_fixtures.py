"""Spec-Bench prompts on the default model and ``ar``'s answers to them, for the default-model
identity tests (the loaded model is conftest's ``default_pipe`` fixture)."""

import json

import pytest

from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

SPEC_BENCH = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"
TASKS = ("writing", "translation", "summarization", "qa", "math_reasoning", "rag")


def spec_bench_ids(pipe, per_task: int) -> list[list[int]]:
    """The first ``per_task`` questions of each of TASKS, chat-encoded (skips without the file)."""
    if not SPEC_BENCH.is_file():
        pytest.skip(f"no Spec-Bench file at {SPEC_BENCH}")
    seen: dict[str, int] = {}
    ids = []
    for line in SPEC_BENCH.read_text().splitlines():
        q = json.loads(line)
        if q["category"] in TASKS and seen.get(q["category"], 0) < per_task:
            seen[q["category"]] = seen.get(q["category"], 0) + 1
            ids.append(pipe.encode(q["turns"][0], chat=True))
    return ids


def ar_answers(pipe, prompts: list[list[int]], max_new_tokens: int) -> list[tuple]:
    """[(prompt, ar's output)] with the model's EOS tokens."""
    eos = pipe._eos_ids()
    return [(p, generate_ids(pipe.model, [p], max_new_tokens=max_new_tokens, eos_ids=eos)[0][0])
            for p in prompts]


def assert_answers_like_ar(pipe, reference: list[tuple], method, max_new_tokens: int) -> None:
    """``method`` (a name or strategy) emits ``ar``'s tokens on every (prompt, answer) of
    ``reference`` and accepts drafts (mean accepted > 1)."""
    eos = pipe._eos_ids()
    for prompt, want in reference:
        (got,), stats = generate_ids(pipe.model, [prompt], method=method,
                                     max_new_tokens=max_new_tokens, eos_ids=eos)
        assert got.token_ids == want.token_ids
        assert stats.mean_accepted > 1.0
