"""The EAGLE head's layer format in decoding: Q8_0 against the exact (BF16) copy, alternated per
prompt on the first 2 Spec-Bench questions of each of its 13 categories (26 questions, chat
template, 128 new tokens, greedy).

    python benchmarks/head_layer_format.py [--method chain:2] [--threads 2]

Both formats draft from the same weights up to Q8_0 rounding; verification keeps the tokens
identical to ``ar``, so only τ and the time can differ. Prints τ and decode tokens/s per format.
"""

from __future__ import annotations

import argparse

import torch
from common import spec_bench_first_turns

from adaeagle_ext.api import load
from adaeagle_ext.spec.eagle_base import resolve_head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="chain:2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    p = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    head = resolve_head(None, p.model)
    prompts = spec_bench_first_turns(args.per_category)
    totals = {f: [0, 0, 0.0] for f in ("exact", "q8_0")}
    for prompt in prompts:
        for fmt, tot in totals.items():
            head.layer_format = fmt
            s = p.generate(prompt, method=args.method, max_new_tokens=args.max_new_tokens,
                           chat=True).stats
            tot[0] += s.new_tokens
            tot[1] += s.decode_steps
            tot[2] += s.decode_s
    print(f"{len(prompts)} prompts, {args.method}, {args.threads} threads, bf16")
    for fmt, (tokens, steps, secs) in totals.items():
        print(f"{fmt}: tau {tokens / steps:.3f}, decode {tokens / secs:.1f} tok/s, "
              f"{steps} steps")


if __name__ == "__main__":
    with torch.inference_mode():
        main()
