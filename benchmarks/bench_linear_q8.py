"""``linear`` with float activations vs 8-bit activation blocks (``act_quant=8``), A/B.

The default model's shapes (Q4_1 layers, Q8_0 LM head) at M in {1, 4, 8, 16, 32, 64}. The two
modes run interleaved call by call in one process (the machine is shared and noisy), each call
on the next of enough distinct weight copies (> 96 MiB) that it streams from DRAM as in a real
decode step; the median of many calls is reported. Writes benchmarks/results/linear_q8.{json,md}.

    python benchmarks/bench_linear_q8.py [--threads 2] [--reps 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402

from adaeagle_ext import ops  # noqa: E402
from adaeagle_ext.packed import PackedWeight  # noqa: E402

SHAPES = [("qkv 576->960", 576, 960, ops.GGML_Q4_1), ("o 576->576", 576, 576, ops.GGML_Q4_1),
          ("gate/up 576->3072", 576, 3072, ops.GGML_Q4_1),
          ("down 1536->576", 1536, 576, ops.GGML_Q4_1),
          ("lm_head 576->49152", 576, 49152, ops.GGML_Q8_0)]
TYPE_NAMES = {ops.GGML_Q4_1: "Q4_1", ops.GGML_Q8_0: "Q8_0", ops.GGML_Q4_0: "Q4_0"}
ROWS = (1, 4, 8, 16, 32, 64)
POOL_BYTES = 96 << 20


def ab_medians(calls: dict[str, list], reps: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per call of each mode; modes alternate call by call, cycling copies."""
    times: dict[str, list[float]] = {mode: [] for mode in calls}
    for i in range(reps + warmup):
        for mode, fns in calls.items():
            fn = fns[i % len(fns)]
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--shapes", default="", help="comma-separated substrings to keep")
    parser.add_argument("--out", default=str(HERE / "results" / "linear_q8"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, k, n, ggml_type in SHAPES:
        if args.shapes and not any(s in name for s in args.shapes.split(",")):
            continue
        first = PackedWeight.from_float(torch.randn(n, k, generator=gen) * 0.05, ggml_type)
        copies = [first] + [PackedWeight(first.data.clone(), ggml_type, (n, k))
                            for _ in range(max(0, -(-POOL_BYTES // first.nbytes) - 1))]
        for m in ROWS:
            x = torch.randn(m, k, generator=gen)
            y = torch.empty(m, n)
            calls = {mode: [lambda p=p, q=q, x=x, y=y: p.linear(x, out=y, act_quant=q)
                            for p in copies]
                     for mode, q in (("fp32", 0), ("q8", 8))}
            reps = max(20, args.reps // max(1, (n * k * m) >> 24))
            med = ab_medians(calls, reps)
            row = {"shape": name, "type": TYPE_NAMES[ggml_type], "m": m,
                   "fp32_us": med["fp32"] * 1e6, "q8_us": med["q8"] * 1e6,
                   "bytes": first.nbytes, "reps": reps}
            rows.append(row)
            print(f"{name:20s} M={m:3d}  fp32 {row['fp32_us']:9.1f} us  q8 {row['q8_us']:9.1f} us"
                  f"  x{row['fp32_us'] / row['q8_us']:.2f}", flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    lines = ["# linear: float activations vs 8-bit activation blocks (act_quant=8)", "",
             f"Command: `python benchmarks/bench_linear_q8.py --threads {args.threads} "
             f"--reps {args.reps}`", "",
             f"Machine: {', '.join(f'{k}={v}' for k, v in info.items())}", "",
             "Median us per call, the two modes interleaved call by call, weights streamed from "
             "DRAM (distinct copies cycled). GB/s = weight bytes / time.", ""]
    by_shape: dict[str, list[dict]] = {}
    for r in rows:
        by_shape.setdefault(r["shape"], []).append(r)
    lines += ["| shape | type | M | fp32 act (us) | q8 act (us) | speed-up | q8 GB/s | "
              "q8 time / q8 M=1 | fp32 time / fp32 M=1 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape_rows in by_shape.values():
        one = shape_rows[0]
        for r in shape_rows:
            lines.append(
                f"| {r['shape']} | {r['type']} | {r['m']} | {r['fp32_us']:.1f} | "
                f"{r['q8_us']:.1f} | "
                f"{r['fp32_us'] / r['q8_us']:.2f}x | {r['bytes'] / r['q8_us'] / 1e3:.1f} | "
                f"{r['q8_us'] / one['q8_us']:.2f} | {r['fp32_us'] / one['fp32_us']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
