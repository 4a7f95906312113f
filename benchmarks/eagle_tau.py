"""τ and tokens/s of the EAGLE-head strategies vs ``ar`` on a few Spec-Bench prompts.

    python benchmarks/eagle_tau.py --per-category 1 --max-new-tokens 64 --threads 2 \\
        --methods ar chain:3 eagle eagle2 [--head PATH] [--dtype float32]

One prompt at a time (batch 1), greedy, EOS off so every method generates the same number of
tokens; each method's tokens are checked against ``ar``'s. τ = tokens committed per target
step (bonus token included). The machine is shared: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import adaeagle_ext
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

SPEC_BENCH = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"
TASKS = ("writing", "translation", "summarization", "qa", "math_reasoning", "rag")


def spec_bench_prompts(per_category: int, path: Path = SPEC_BENCH) -> list[tuple[str, str]]:
    """(category, first turn) of the first ``per_category`` questions of each task (MT-bench
    is represented by its writing category)."""
    seen: dict[str, int] = {}
    out = []
    for line in path.read_text().splitlines():
        q = json.loads(line)
        cat = q["category"]
        if cat in TASKS and seen.get(cat, 0) < per_category:
            seen[cat] = seen.get(cat, 0) + 1
            out.append((cat, q["turns"][0]))
    return out


def make(method: str, head):
    name, _, spec = method.partition(":")
    if name == "chain":
        return EagleChain(spec or None, head=head)
    if name == "eagle":
        return EagleTree(spec or None, head=head)
    if name == "eagle2":
        return Eagle2(spec or None, head=head)
    return method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--methods", nargs="+", default=["ar", "chain:3", "eagle", "eagle2"])
    ap.add_argument("--head", default=None, help="head file (default: the shipped one)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    pipe = adaeagle_ext.load(dtype=args.dtype, threads=args.threads, progress=False)
    prompts = spec_bench_prompts(args.per_category)
    ids = [pipe.encode(text, chat=True) for _, text in prompts]
    generate_ids(pipe.model, ids[:1], max_new_tokens=4)  # warm-up
    rows = {}
    reference = None
    for method in args.methods:
        tok_s, taus, draft_s, verify_s, total_s, same = [], [], 0.0, 0.0, 0.0, 0
        for i, prompt in enumerate(ids):
            (out,), st = generate_ids(pipe.model, [prompt], method=make(method, args.head),
                                      max_new_tokens=args.max_new_tokens)
            tok_s.append(st.tokens_per_s)
            taus.append(st.mean_accepted)
            draft_s += st.draft_s
            verify_s += st.verify_s
            total_s += st.total_s
            if method == "ar":
                reference = reference or {}
                reference[i] = out.token_ids
            same += reference is not None and reference.get(i) == out.token_ids
        rows[method] = dict(tokens_per_s=sum(tok_s) / len(tok_s), tau=sum(taus) / len(taus),
                            draft_share=draft_s / total_s, verify_share=verify_s / total_s,
                            identical=f"{same}/{len(ids)}")
    base = rows.get("ar", {}).get("tokens_per_s")
    print(f"{len(ids)} Spec-Bench prompts ({', '.join(c for c, _ in prompts)}), "
          f"{args.max_new_tokens} new tokens, {args.dtype}, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| method | tokens/s | speedup | τ | draft time | verify time | same as ar |")
    print("|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        sp = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"| {m} | {r['tokens_per_s']:.1f} | {sp} | {r['tau']:.2f} | "
              f"{r['draft_share']:.0%} | {r['verify_share']:.0%} | {r['identical']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
