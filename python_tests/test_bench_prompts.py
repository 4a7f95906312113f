"""Benchmark questions: both input formats, the mt_bench task, stratified selection, errors."""

import json

import pytest

from adaeagle_ext.bench.prompts import DEFAULT_PROMPTS, load_questions, select


def write(tmp_path, rows, name="q.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_spec_bench_format_and_mt_bench_task(tmp_path):
    path = write(tmp_path, [
        {"question_id": 81, "category": "writing", "turns": ["a", "b"]},
        {"question_id": 130, "category": "coding", "turns": ["c", "d"]},
        {"question_id": 161, "category": "translation", "turns": ["e"]}])
    qs = load_questions(path)
    assert [q.qid for q in qs] == ["81", "130", "161"]
    assert [q.task for q in qs] == ["mt_bench", "mt_bench", "translation"]
    assert qs[0].turns == ("a", "b") and qs[0].category == "writing"


def test_simple_format(tmp_path):
    path = write(tmp_path, [{"id": "x1", "category": "qa", "prompt": "Why?"},
                            {"id": "x2", "category": "stem", "prompt": "How?"}])
    qs = load_questions(path)
    assert [(q.qid, q.task, q.turns) for q in qs] == [("x1", "qa", ("Why?",)),
                                                      ("x2", "mt_bench", ("How?",))]


@pytest.mark.parametrize("row, msg", [
    ({"question_id": 1, "turns": ["a"]}, "category"),
    ({"question_id": 1, "category": "qa", "turns": []}, "turns"),
    ({"id": 1, "category": "qa"}, "expected Spec-Bench fields"),
    ({"category": "qa", "prompt": "p"}, "id"),
])
def test_bad_rows_are_named(tmp_path, row, msg):
    with pytest.raises(ValueError, match=msg):
        load_questions(write(tmp_path, [row]))


def test_missing_file_and_duplicates(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_questions(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="duplicate"):
        load_questions(write(tmp_path, [{"id": 1, "category": "a", "prompt": "p"}] * 2))


def test_shipped_spec_bench_file_and_stratified_selection():
    qs = load_questions(DEFAULT_PROMPTS)
    assert len(qs) == 480
    tasks = {}
    for q in qs:
        tasks[q.task] = tasks.get(q.task, 0) + 1
    assert tasks == {t: 80 for t in ["mt_bench", "translation", "summarization", "qa",
                                     "math_reasoning", "rag"]}
    assert all(len(q.turns) == 2 for q in qs if q.task == "mt_bench")
    a = select(qs, per_category=2, seed=0)
    assert len(a) == 12 and all(sum(q.task == t for q in a) == 2 for t in tasks)
    assert [q.qid for q in a] == [q.qid for q in select(qs, per_category=2, seed=0)]
    assert [q.qid for q in a] != [q.qid for q in select(qs, per_category=2, seed=1)]
    assert [q.qid for q in select(qs, per_category=2, limit=3)] == [q.qid for q in a[:3]]
    assert len(select(qs)) == 480
    with pytest.raises(ValueError, match="per_category"):
        select(qs, per_category=0)
