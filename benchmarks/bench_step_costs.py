"""Measure the step costs adaptive strategies use (a target verify pass over T tokens, an EAGLE
head draft step over M nodes) on this machine, and print them as a markdown table.

    python benchmarks/bench_step_costs.py --dtype float32 --threads 1 [--reps 3 --budget 10]
        [--verify-sizes 1,2,3,4,5,6,7,8,12,16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from adaeagle_ext.api import load
from adaeagle_ext.spec.eagle_base import resolve_head
from adaeagle_ext.spec.step_costs import (
    DEFAULT_BUDGET_S,
    DEFAULT_REPS,
    VERIFY_SIZES,
    measure_step_costs,
)


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated integers: "1,2,4" -> (1, 2, 4)."""
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=DEFAULT_REPS)
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help="seconds after which no further repetition round starts")
    p.add_argument("--cache-len", type=int, default=256)
    p.add_argument("--verify-sizes", type=sizes, default=VERIFY_SIZES,
                   help="comma-separated verify pass sizes T, increasing")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    pipe = load(None, dtype=args.dtype, threads=args.threads, progress=False)
    head = resolve_head(None, pipe.model)
    t0 = time.perf_counter()
    costs = measure_step_costs(pipe.model, head, reps=args.reps, budget_s=args.budget,
                               cache_len=args.cache_len, verify_sizes=args.verify_sizes)
    took = time.perf_counter() - t0
    print(f"default model, {args.dtype}, {args.threads} thread(s), cache {costs.cache_len}, "
          f"median of {costs.reps} rep(s), measured in {took:.2f} s "
          f"({platform.processor() or platform.machine()}, torch {torch.__version__})")
    print(costs.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(dtype=args.dtype, threads=args.threads, cache_len=costs.cache_len,
                           reps=costs.reps, seconds=took,
                           verify=dict(zip(costs.verify_sizes, costs.verify_times, strict=True)),
                           draft=dict(zip(costs.draft_sizes, costs.draft_times, strict=True))),
                      f, indent=1)


if __name__ == "__main__":
    main()
