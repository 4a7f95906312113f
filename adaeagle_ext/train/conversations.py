"""Training conversations (prompt + reference response) read from the workplace's data files.

Every reader yields ``Conversation(prompt, response, source)``; ``response`` may be None (a
prompt-only file, usable with self-distillation). Prompts that are evaluation questions (the
Spec-Bench / MT-bench files, when found, plus Alpaca's "Prove the Pythagorean Theorem.") are
dropped, so no head is ever trained on what it is measured on.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path


def _default_data_root() -> Path:
    """``$ADAEAGLE_TRAIN_DATA``, else the first ``shared/data/train`` beside a parent folder of
    the package (this workplace's layout)."""
    env = os.environ.get("ADAEAGLE_TRAIN_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "data" / "train"
        if cand.is_dir():
            return cand
    return here.parents[3] / "shared" / "data" / "train"


DEFAULT_DATA_ROOT = _default_data_root()
ALWAYS_EXCLUDED = {"Prove the Pythagorean Theorem."}

# Permissively licensed files (path under the data root, licence), the shipped head's sources.
PERMISSIVE_SOURCES = [
    ("gpteacher/codegen-instruct.json", "MIT (teknium1/GPTeacher)"),
    ("gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "MIT (teknium1/GPTeacher)"),
    ("gsm8k/train.jsonl", "MIT (openai/grade-school-math)"),
    ("openassistant/en_100_tree.jsonl", "Apache-2.0 (LAION-AI/Open-Assistant)"),
    ("openassistant/prompt_lottery_en_250_text.jsonl", "Apache-2.0 (LAION-AI/Open-Assistant)"),
    ("code_alpaca/code_alpaca_2k.json",
     "Apache-2.0 repository (sahil280114/codealpaca; OpenAI-generated data)"),
    ("t0_cnn_dailymail", "Apache-2.0 (CNN/DailyMail HF card; articles (c) CNN/Daily Mail, "
                         "research use)"),
    ("wmt21_de-en/newstest2021.de-en.jsonl", "WMT21 news test set, research use"),
]


@dataclass
class Conversation:
    prompt: str
    response: str | None
    source: str


def _records(path: Path):
    if path.suffix == ".jsonl":
        with path.open() as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    else:
        yield from json.loads(path.read_text())


def _from_record(rec, source: str) -> Conversation | None:
    if isinstance(rec, str):
        return Conversation(rec, None, source)
    if "instruction" in rec:
        prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        return Conversation(prompt, rec.get("output") or rec.get("response"), source)
    if "question" in rec:
        ans = rec.get("answer")
        ans = ans[0] if isinstance(ans, list) and ans else ans
        return Conversation(rec["question"], ans if isinstance(ans, str) else None, source)
    if "prompt" in rec and "completion" in rec:
        return Conversation(rec["prompt"], rec["completion"].strip(), source)
    if "de" in rec and "en" in rec:  # the Spec-Bench translation prompt format
        return Conversation(f"Translate German to English: {rec['de']}", rec["en"], source)
    if "prompt" in rec and isinstance(rec["prompt"], dict):  # an OpenAssistant tree
        replies = rec["prompt"].get("replies") or []
        return Conversation(rec["prompt"]["text"], replies[0]["text"] if replies else None,
                            source)
    return None


def read_conversations(path: str | Path) -> list[Conversation]:
    """All conversations of one file, or of every .json/.jsonl file of a folder."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) \
        if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .json/.jsonl training files at {path}")
    out = []
    for f in files:
        for rec in _records(f):
            conv = _from_record(rec, f"{f.parent.name}/{f.name}")
            if conv is not None and conv.prompt.strip():
                out.append(conv)
    return out


def evaluation_prompts(data_root: Path) -> set[str]:
    """First-turn and later-turn questions of the evaluation files next to the data root."""
    found = set(ALWAYS_EXCLUDED)
    for rel in ("spec_bench/question.jsonl", "mt_bench/question.jsonl"):
        p = data_root.parent / rel
        if p.is_file():
            for rec in _records(p):
                found.update(t.strip() for t in rec.get("turns", []))
    return found


def training_mix(paths: list[str | Path], total: int, seed: int = 0,
                 need_response: bool = False, exclude: set[str] | None = None
                 ) -> list[Conversation]:
    """Up to ``total`` conversations drawn round-robin over the given sources (so small sources
    are not drowned by large ones), shuffled with ``seed``, evaluation prompts and exact
    duplicates dropped."""
    rng = random.Random(seed)
    exclude = exclude or set()
    pools = []
    for p in paths:
        seen = set()
        pool = []
        for c in read_conversations(p):
            key = c.prompt.strip()
            if key in exclude or key in seen or (need_response and not c.response):
                continue
            seen.add(key)
            pool.append(c)
        rng.shuffle(pool)
        if pool:
            pools.append(pool)
    out = []
    while len(out) < total and any(pools):
        for pool in pools:
            if pool and len(out) < total:
                out.append(pool.pop())
    rng.shuffle(out)
    return out
