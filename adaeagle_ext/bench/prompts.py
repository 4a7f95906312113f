"""Benchmark questions: loading both input formats, Spec-Bench task names, stratified selection.

Two JSONL formats are accepted (one object per line, formats may not be mixed in one file):

- Spec-Bench: ``{"question_id": 81, "category": "writing", "turns": ["...", "..."]}``; the
  MT-bench block carries MT-bench's 8 sub-categories, reported together as task ``mt_bench``.
- simple: ``{"id": "a1", "category": "qa", "prompt": "..."}`` (one turn).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# MT-bench's sub-categories, which Spec-Bench reports as one task.
MT_BENCH_CATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"})
MT_BENCH = "mt_bench"
# Spec-Bench's column order; other tasks follow alphabetically.
TASK_ORDER = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "benchmarks/data/spec_bench_question.jsonl"


@dataclass(frozen=True)
class Question:
    """One benchmark question.

    qid: its id (as a string); category: the file's category; task: the reported task
    (``mt_bench`` for MT-bench sub-categories, else the category); turns: user turns, answered
    in one conversation (each turn sees the previous turns and the model's own answers).
    """

    qid: str
    category: str
    task: str
    turns: tuple[str, ...]


def task_of(category: str) -> str:
    """The Spec-Bench task a category belongs to."""
    return MT_BENCH if category in MT_BENCH_CATEGORIES else category


def parse_question(obj: dict, where: str = "") -> Question:
    """A Question from one JSON object of either format (ValueError naming the problem)."""
    if "turns" in obj:
        qid, turns = obj.get("question_id"), obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{where}'turns' must be a non-empty list of strings")
    elif "prompt" in obj:
        qid, turns = obj.get("id"), [obj["prompt"]]
        if not isinstance(turns[0], str) or not turns[0]:
            raise ValueError(f"{where}'prompt' must be a non-empty string")
    else:
        raise ValueError(f"{where}expected Spec-Bench fields (question_id, category, turns) or "
                         f"simple fields (id, category, prompt); got {sorted(obj)}")
    if qid is None:
        raise ValueError(f"{where}missing 'question_id' / 'id'")
    category = obj.get("category")
    if not isinstance(category, str) or not category:
        raise ValueError(f"{where}missing 'category'")
    return Question(str(qid), category, task_of(category), tuple(turns))


def load_questions(path: str | Path) -> list[Question]:
    """All questions of a JSONL file in file order; ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    out: list[Question] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            out.append(parse_question(obj, f"{path}:{n}: "))
    if not out:
        raise ValueError(f"{path}: no questions")
    ids = [q.qid for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate question ids")
    return out


def ordered_tasks(tasks) -> list[str]:
    """Tasks in Spec-Bench's column order, unknown ones after, alphabetically."""
    tasks = set(tasks)
    return [t for t in TASK_ORDER if t in tasks] + sorted(tasks - set(TASK_ORDER))


def select(questions: list[Question], per_category: int | None = None,
           limit: int | None = None, seed: int = 0) -> list[Question]:
    """Pick the questions to run.

    per_category: N questions per task (stratified; a seeded sample, in file order); tasks with
    fewer keep all of theirs. limit: then keep the first ``limit``. Both None: all questions.
    """
    chosen = list(questions)
    if per_category is not None:
        if per_category < 1:
            raise ValueError(f"per_category must be >= 1, got {per_category}")
        rng = random.Random(seed)
        keep: set[str] = set()
        for task in ordered_tasks(q.task for q in questions):
            ids = [q.qid for q in questions if q.task == task]
            keep.update(rng.sample(ids, min(per_category, len(ids))))
        chosen = [q for q in questions if q.qid in keep]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        chosen = chosen[:limit]
    return chosen
