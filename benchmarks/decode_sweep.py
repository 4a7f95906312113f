"""Decode-only tokens/s and τ of several methods on one Spec-Bench question per category,
methods alternated question by question (a quick sweep of strategy options; `adaeagle bench`
is the full harness).

    python benchmarks/decode_sweep.py ar aded:max_nodes=3 aded:max_nodes=3,iterations=50 \\
        [--threads 2] [--max-new-tokens 128]

The first method is the baseline of the speed ratios. Prompts go through the chat template;
prefill time is left out.
"""

from __future__ import annotations

import argparse
import json

import torch

from adaeagle_ext.api import load
from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

SPEC_BENCH = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    p = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    by_category: dict[str, list[str]] = {}
    for line in SPEC_BENCH.read_text().splitlines():
        q = json.loads(line)
        by_category.setdefault(q["category"], []).append(q["turns"][0])
    prompts = [turns[1] for turns in by_category.values()]
    p.generate(prompts[0], method=args.methods[-1], max_new_tokens=8)  # warm-up
    totals = {m: [0, 0, 0.0, 0.0] for m in args.methods}
    for prompt in prompts:
        for method, tot in totals.items():
            s = p.generate(prompt, method=method, max_new_tokens=args.max_new_tokens).stats
            tot[0] += s.new_tokens
            tot[1] += s.decode_steps
            tot[2] += s.decode_s
            tot[3] += s.draft_s
    base = totals[args.methods[0]][0] / totals[args.methods[0]][2]
    print(f"{len(prompts)} prompts, {args.threads} threads, bf16, decode only")
    for method, (tokens, steps, secs, draft) in totals.items():
        speed = tokens / secs
        print(f"{method}: tau {tokens / steps:.2f}, {speed:.1f} tok/s ({speed / base:.2f}x), "
              f"draft {draft / steps * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
