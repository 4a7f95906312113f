"""The shipped head on the default model: EAGLE strategies emit ``ar``'s tokens (fp32)."""

import json

import pytest

from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

pytestmark = [pytest.mark.model, pytest.mark.slow]

SPEC_BENCH = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"
TASKS = ("writing", "translation", "summarization", "qa", "math_reasoning", "rag")


@pytest.fixture(scope="module")
def pipe():
    from adaeagle_ext.api import load

    return load(None, dtype="float32", threads=2, progress=False)


def spec_bench_ids(pipe, per_task: int) -> list[list[int]]:
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


@pytest.fixture(scope="module")
def reference(pipe):
    """12 prompts (2 per task) and ar's 128-token answers."""
    prompts = spec_bench_ids(pipe, 2)
    eos = pipe._eos_ids()
    return [(p, generate_ids(pipe.model, [p], max_new_tokens=128, eos_ids=eos)[0][0])
            for p in prompts]


@pytest.mark.parametrize("method", ["chain:3", "eagle", "eagle2"])
def test_shipped_head_matches_ar_on_spec_bench(pipe, reference, method):
    eos = pipe._eos_ids()
    for prompt, want in reference:
        (got,), stats = generate_ids(pipe.model, [prompt], method=method, max_new_tokens=128,
                                     eos_ids=eos)
        assert got.token_ids == want.token_ids
        assert stats.mean_accepted > 1.0
