"""Run every method on every question, side by side, and collect Spec-Bench metrics.

`make bench` runs (the lead owns the Makefile; extend --methods as strategies land):

    $(PY) -m adaeagle_ext.cli bench --per-category 2 --max-new-tokens 64 --threads 2 \
        --methods ar,hf,hf-pld,all --out benchmarks/results/specbench_make

(``all`` expands to every registered strategy.) Questions are the outer loop and methods the
inner one, so slow drift of a shared machine hits all methods alike. Each method answers each
question's turns in one conversation, with its own earlier answers (as Spec-Bench does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adaeagle_ext.bench import peers
from adaeagle_ext.bench.losslessness import lossless_report, runtime_logits
from adaeagle_ext.bench.metrics import BASELINE, QuestionResult, Summary, TurnResult, summarize_all
from adaeagle_ext.bench.prompts import Question, ordered_tasks
from adaeagle_ext.models.llama import LlamaForCausalLM
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.strategy import Strategy, available_methods, make_strategy

WARMUP_TOKENS = 16


@dataclass
class Target:
    """What the harness needs of a loaded model.

    encode_chat: chat messages -> prompt token ids (template and assistant prefix applied).
    decode: token ids -> text (the answer placed into the next turn's conversation).
    eos_ids: ids that end an answer. gguf: the GGUF source (for ``llama_cpp``), if any.
    """

    model: LlamaForCausalLM
    encode_chat: Callable[[list[dict]], list[int]]
    decode: Callable[[list[int]], str]
    eos_ids: list[int]
    gguf: Path | None = None

    @classmethod
    def from_pipeline(cls, pipe) -> Target:
        tok = pipe.tokenizer
        if not tok.has_chat_template:
            raise ValueError("the benchmark needs a model with a chat template")
        eos = sorted(set(pipe.config.eos_token_ids) | set(tok.eos_ids))
        src = pipe.source if pipe.source is not None and pipe.source.suffix == ".gguf" else None
        return cls(pipe.model, lambda m: tok.encode(m, chat=True), tok.decode, eos, src)


class RuntimeMethod:
    """A registered strategy on this project's runtime (built once, outside the timing).

    method: a name (``"chain:3"``) or a built Strategy. Strategies with an LDLP keep
    ``predicted_lengths`` (reset by every generate call's ``setup``); each turn copies them
    next to ``accepted_per_step``.
    """

    def __init__(self, model: LlamaForCausalLM, method: str | Strategy):
        self.model = model
        self.strategy = make_strategy(method)

    def run(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: Sequence[int],
            temperature: float = 0.0, seed: int = 0) -> TurnResult:
        t0 = time.perf_counter()
        (out,), st = generate_ids(self.model, [prompt_ids], method=self.strategy,
                                  max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                                  sampling=SamplingParams(temperature=temperature, seed=seed))
        wall = time.perf_counter() - t0
        accepted = [int(a) for a in st.accepted_per_step]
        predicted = getattr(self.strategy, "predicted_lengths", None)
        if predicted is not None:
            predicted = [int(k) for k in predicted]
            if len(predicted) != len(accepted):
                raise RuntimeError(f"{self.strategy.name} recorded {len(predicted)} predicted "
                                   f"lengths for {len(accepted)} steps")
        return TurnResult(list(prompt_ids), out.token_ids, wall, steps=len(accepted),
                          step_tokens=sum(accepted), draft_tokens=list(st.draft_tokens),
                          draft_s=st.draft_s, verify_s=st.verify_s, accepted=accepted,
                          predicted=predicted)


def resolve_methods(spec: str | Sequence[str]) -> list[str]:
    """Method names from ``"ar,chain:3,hf"`` (``all``: every registered strategy); ``ar`` is
    always run first (the speedup baseline). A piece ``key=value`` without a ``:`` continues
    the method before it, so ``"ar,eagle2:top_k=3,depth=3"`` names two methods. ValueError
    lists what is available."""
    if isinstance(spec, str):
        names: list[str] = []
        for piece in (m.strip() for m in spec.split(",")):
            if names and "=" in piece and ":" not in piece:
                names[-1] += "," + piece
            else:
                names.append(piece)
    else:
        names = [m.strip() for m in spec]
    out: list[str] = [BASELINE]
    for name in filter(None, names):
        expanded = available_methods() if name == "all" else [name]
        for m in expanded:
            if m not in out:
                out.append(m)
    strategies = set(available_methods())
    for m in out:
        if m.partition(":")[0] not in strategies and not peers.is_peer(m):
            raise ValueError(
                f"unknown method {m!r}; strategies: {', '.join(available_methods())}; "
                f"peers: {', '.join(peers.available_peers())}")
    return out


def build_methods(target: Target, methods: Sequence[str], threads: int | None = None) -> dict:
    """One runner per method name (``run(prompt_ids, max_new_tokens, eos_ids, T, seed)``)."""
    out = {}
    hf_model = None
    for m in methods:
        if peers.is_peer(m):
            if m.startswith("hf") and hf_model is None:
                hf_model = peers.hf_from_runtime(target.model)
            out[m] = peers.make_peer(m, target.model, gguf=target.gguf, threads=threads,
                                     hf_model=hf_model)
        else:
            out[m] = RuntimeMethod(target.model, m)
    return out


def answer(target: Target, question: Question, method: str, runner, max_new_tokens: int,
           temperature: float = 0.0, seed: int = 0) -> QuestionResult:
    """Answer a question's turns in one conversation (each turn sees the earlier answers)."""
    result = QuestionResult(method, question.qid, question.task)
    messages: list[dict] = []
    for turn in question.turns:
        messages.append({"role": "user", "content": turn})
        ids = target.encode_chat(list(messages))
        res = runner.run(ids, max_new_tokens, target.eos_ids, temperature, seed)
        result.turns.append(res)
        messages.append({"role": "assistant", "content": target.decode(res.token_ids)})
    return result


@dataclass
class BenchRun:
    """Everything one run measured. summaries: ``{method: {task | "overall": Summary}}``;
    lossless: ``lossless_report`` (None when temperature > 0)."""

    settings: dict
    methods: list[str]
    tasks: list[str]
    results: dict[str, list[QuestionResult]]
    summaries: dict[str, dict[str, Summary]] = field(default_factory=dict)
    lossless: dict | None = None


def run_bench(target: Target, questions: Sequence[Question], methods: Sequence[str], *,
              max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
              warmup: int = 1, threads: int | None = None, progress: bool = True,
              runners: dict | None = None) -> BenchRun:
    """Measure ``methods`` (``ar`` first) on ``questions`` and summarise.

    runners: prebuilt runners by method name (default: ``build_methods``).
    """
    from tqdm import tqdm

    if not questions:
        raise ValueError("no questions to run")
    methods = resolve_methods(methods)
    runners = runners or build_methods(target, methods, threads)
    if warmup:
        first = target.encode_chat([{"role": "user", "content": questions[0].turns[0]}])
        for m in methods:
            for _ in range(warmup):
                runners[m].run(first, min(WARMUP_TOKENS, max_new_tokens), target.eos_ids,
                               temperature, seed)
    results: dict[str, list[QuestionResult]] = {m: [] for m in methods}
    bar = tqdm(questions, desc="bench", unit="q", disable=not progress)
    for i, q in enumerate(bar):
        for m in methods:
            results[m].append(answer(target, q, m, runners[m], max_new_tokens, temperature,
                                     seed + i))
        bar.set_postfix_str(_running_speedups(results))
    tasks = ordered_tasks(q.task for q in questions)
    run = BenchRun(dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                        warmup=warmup, questions=len(questions)),
                   list(methods), tasks, results, summarize_all(results, tasks))
    if temperature == 0:
        run.lossless = lossless_report(results, runtime_logits(target.model))
    return run


def _running_speedups(results: dict[str, list[QuestionResult]]) -> str:
    def mean_tps(qs):
        return sum(q.tokens_per_s for q in qs) / len(qs)

    base = mean_tps(results[BASELINE])
    parts = [f"ar {base:.1f} tok/s"]
    parts += [f"{m} {mean_tps(qs) / base:.2f}x" for m, qs in results.items()
              if m != BASELINE and base > 0]
    return ", ".join(parts)
