"""Decode-only tokens/s and τ of several methods, alternated prompt by prompt (a quick sweep of
strategy options; `adaeagle bench` is the full harness).

    python benchmarks/decode_sweep.py ar aded aded-conf:min_value=0.2 [--threads 2] \\
        [--max-new-tokens 128] [--train 20 --seed 3]

Prompts: one Spec-Bench question per category (the second), or with `--train N` N training
conversations (`training_mix` over the permissive sources of `shared/data/train/` plus NQ-open,
evaluation prompts excluded): tune knobs there, report on Spec-Bench. The first method is the
baseline of the speed ratios; "identical" counts outputs equal to the baseline's. Prompts go
through the chat template; prefill time is left out.
"""

from __future__ import annotations

import argparse

from common import spec_bench_first_turns

from adaeagle_ext.api import load
from adaeagle_ext.train.conversations import (
    DEFAULT_DATA_ROOT,
    PERMISSIVE_SOURCES,
    evaluation_prompts,
    training_mix,
)

NQ_OPEN = "nq_open/NQ-open.efficientqa.dev.1.1.jsonl"


def training_prompts(count: int, seed: int) -> list[str]:
    """``count`` training prompts, none of them an evaluation prompt."""
    paths = [DEFAULT_DATA_ROOT / rel for rel, _ in PERMISSIVE_SOURCES]
    paths.append(DEFAULT_DATA_ROOT / NQ_OPEN)
    convs = training_mix(paths, count, seed=seed, exclude=evaluation_prompts(DEFAULT_DATA_ROOT))
    return [c.prompt for c in convs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("methods", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--train", type=int, default=0,
                    help="use this many training prompts instead of Spec-Bench questions")
    ap.add_argument("--seed", type=int, default=0, help="which training prompts (with --train)")
    args = ap.parse_args()
    p = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    if args.train:
        prompts = training_prompts(args.train, args.seed)
    else:
        prompts = spec_bench_first_turns(2)[1::2]  # the second question of each category
    p.generate(prompts[0], method=args.methods[-1], max_new_tokens=8)  # warm-up
    totals = {m: [0, 0, 0.0, 0.0, 0, 0] for m in args.methods}
    for prompt in prompts:
        baseline = None
        for method, tot in totals.items():
            out = p.generate(prompt, method=method, max_new_tokens=args.max_new_tokens)
            s = out.stats
            baseline = out.token_ids if baseline is None else baseline
            tot[0] += s.new_tokens
            tot[1] += s.decode_steps
            tot[2] += s.decode_s
            tot[3] += s.draft_s
            tot[4] += sum(d > 0 for d in s.draft_tokens)
            tot[5] += out.token_ids == baseline
    base = totals[args.methods[0]][0] / totals[args.methods[0]][2]
    source = f"{len(prompts)} training prompts (seed {args.seed})" if args.train else (
        f"{len(prompts)} Spec-Bench prompts")
    print(f"{source}, {args.threads} threads, bf16, decode only")
    for method, (tokens, steps, secs, draft, drafted, same) in totals.items():
        speed = tokens / secs
        print(f"{method}: tau {tokens / steps:.2f}, {speed:.1f} tok/s ({speed / base:.2f}x), "
              f"draft {draft / steps * 1e3:.2f} ms/step, drafted in {drafted / steps:.0%} of "
              f"steps, identical {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
