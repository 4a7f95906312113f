"""aded_draft: one ADED draft search (150 MCTS iterations) vs the same search in pure Python.

Tables: the shipped default table (when present), a synthetic Zipf table, and none (online
overlay only). The context is a walk through the table, so the root bigram has a full row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.drafters.aded import OnlineTrigrams
from adaeagle_ext.drafters.trigram import TrigramTable, count_trigrams
from op_cases import Case

DEFAULT_TABLE = (Path(__file__).resolve().parents[2] / "adaeagle_ext" / "assets"
                 / "smollm2-135m-instruct" / "trigram.bin")


def walk(table: TrigramTable, rng: np.random.Generator, steps: int = 48) -> list[int]:
    """Tokens of a random walk through the table from its longest row (restarting there when a
    bigram has no successor)."""
    lens = np.diff(table.offsets)
    start = int(table.keys[int(np.argmax(lens))])
    tokens = [start >> 32, start & 0xFFFFFFFF]
    while len(tokens) < steps:
        succ, probs = table.row(tokens[-2], tokens[-1])
        if succ.size == 0:
            tokens += [start >> 32, start & 0xFFFFFFFF]
            continue
        tokens.append(int(rng.choice(succ, p=probs / probs.sum())))
    return tokens


def one_case(name: str, table: TrigramTable, context: list[int]) -> Case:
    online = OnlineTrigrams(table)
    online.reinforce(context, window=0)  # as AdedDrafter.reset does with the prompt
    tables, overlay = table.tensors(), online.tensors()
    ctx = torch.tensor(context)
    out = ops.aded_draft(tables, overlay, ctx)
    rows = ref.AdedRows(tables, overlay)

    def ours():
        ops.aded_draft(tables, overlay, ctx, seed=1, out=out)

    def python():
        ref.aded_search(rows, context, seed=1)

    shape = f"{name} K={table.num_keys} iters=150 nodes={int(out.num_nodes[0])}"
    return Case("aded_draft", shape, ours, python, "same search, pure Python")


def cases(device: str) -> list[Case]:
    if device != "cpu":
        return []  # CPU-only op
    rng = np.random.default_rng(0)
    out = []
    if DEFAULT_TABLE.exists():
        table = TrigramTable.load(DEFAULT_TABLE)
        out.append(one_case("default table", table, walk(table, rng)))
    corpus = [rng.zipf(1.3, size=200) % 5000 for _ in range(2000)]
    synthetic = count_trigrams(corpus, vocab_size=5000)
    out.append(one_case("zipf table", synthetic, walk(synthetic, rng)))
    out.append(one_case("no table", TrigramTable.empty(5000), walk(synthetic, rng)))
    return out
