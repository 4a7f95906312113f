"""Losslessness at temperature 0: is each method's output token-identical to ``ar``'s?

For each question, the turns are compared in order; the first differing turn and position is
reported (later turns see different conversations, so they are not compared). At that
position the target's logits on the shared prefix (prompt + common tokens) are recomputed with
one forward of the runtime, and the gap between its top-2 logits is reported: a small gap
means a near-tie that rounding (e.g. bf16 matmuls over different row counts) can flip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from adaeagle_ext.bench.metrics import BASELINE, QuestionResult
from adaeagle_ext.models.llama import LlamaForCausalLM
from adaeagle_ext.models.tree_inputs import MAX_TREE_NODES, chain_inputs

LogitsFn = Callable[[list[int]], torch.Tensor]  # token ids [T] -> float32 logits [V] of the last


@dataclass
class Divergence:
    """Where a method first left ``ar``'s output.

    turn, position: 0-based turn and generated-token index. ar_token / method_token: the
    tokens there (None: that output ended, by EOS or the length limit). top2_gap: top-1 minus
    top-2 logit of the target on the shared prefix. token_gap: logit(ar_token) -
    logit(method_token) there (None when either ended).
    """

    qid: str
    task: str
    turn: int
    position: int
    ar_token: int | None
    method_token: int | None
    top2_gap: float | None = None
    token_gap: float | None = None


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where a and b differ (a prefix differs at its end)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def find_divergence(ref: QuestionResult, got: QuestionResult) -> Divergence | None:
    """The first (turn, position) where ``got`` differs from ``ref``; None if identical."""
    if ref.qid != got.qid or len(ref.turns) != len(got.turns):
        raise ValueError(f"question {got.qid}: results do not describe the same question")
    for turn, (r, g) in enumerate(zip(ref.turns, got.turns, strict=True)):
        if r.prompt_ids != g.prompt_ids:
            raise ValueError(f"question {got.qid} turn {turn}: prompts differ although all "
                             "earlier output was identical")
        pos = first_difference(r.token_ids, g.token_ids)
        if pos is not None:
            return Divergence(got.qid, got.task, turn, pos, _at(r.token_ids, pos),
                              _at(g.token_ids, pos))
    return None


def _at(ids: list[int], pos: int) -> int | None:
    return ids[pos] if pos < len(ids) else None


def runtime_logits(model: LlamaForCausalLM) -> LogitsFn:
    """Logits of the last token of ``ids``: one pass of the runtime in chunks of <= 64 rows."""

    def fn(ids: list[int]) -> torch.Tensor:
        cache = model.new_cache(1, len(ids))
        logits = None
        for start in range(0, len(ids), MAX_TREE_NODES):
            chunk = ids[start:start + MAX_TREE_NODES]
            prefix = torch.tensor([start], dtype=torch.int32)
            pos, indptr, mask = chain_inputs(torch.tensor([len(chunk)]), prefix)
            logits, _ = model(torch.tensor(chunk, dtype=torch.int64), pos, indptr, mask, prefix,
                              cache, logit_rows=torch.tensor([len(chunk) - 1]))
        return logits[0]

    return fn


def lossless_report(results: dict[str, list[QuestionResult]],
                    logits_fn: LogitsFn | None = None) -> dict[str, dict]:
    """Per method (``ar`` excluded): identical / total questions, rate, divergences.

    logits_fn: the target's logits on a prefix (see ``runtime_logits``); None skips the gaps.
    """
    ref = {q.qid: q for q in results[BASELINE]}
    out = {}
    for method, qs in results.items():
        if method == BASELINE:
            continue
        divs = []
        for q in qs:
            d = find_divergence(ref[q.qid], q)
            if d is None:
                continue
            if logits_fn is not None:
                turn = ref[q.qid].turns[d.turn]
                logits = logits_fn(turn.prompt_ids + turn.token_ids[:d.position]).float()
                top = torch.topk(logits, 2).values
                d.top2_gap = float(top[0] - top[1])
                if d.ar_token is not None and d.method_token is not None:
                    d.token_gap = float(logits[d.ar_token] - logits[d.method_token])
            divs.append(d)
        n = len(qs)
        out[method] = dict(identical=n - len(divs), total=n,
                           rate=(n - len(divs)) / n if n else None,
                           divergences=[asdict(d) for d in divs])
    return out
