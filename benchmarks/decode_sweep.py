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

from common import spec_bench_first_turns

from adaeagle_ext.api import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    p = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    prompts = spec_bench_first_turns(2)[1::2]  # the second question of each category
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
