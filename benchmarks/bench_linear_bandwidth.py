"""Weight bandwidth of ``linear`` at M=1 next to the read bandwidth measured in the same run.

A decode step reads every weight once, so ``linear`` at M=1 should stream weights at the
machine's read bandwidth (BF16, F32), or beat F.linear on bf16 weights by far in weights per
second when dequantising costs more than reading (Q8_0, Q4_1). Each timed call cycles through
enough distinct copies of the weight (> 96 MiB) that it streams from DRAM like a real step,
not from the last-level cache. The "Q4_1 q8" and "Q8_0 q8" rows run the same weights with
8-bit activation blocks (``act_quant=8``). Writes benchmarks/results/linear_bandwidth.{json,md}.

    python benchmarks/bench_linear_bandwidth.py [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info, median_seconds  # noqa: E402

from adaeagle_ext import ops  # noqa: E402
from adaeagle_ext.packed import PackedWeight  # noqa: E402

SHAPES = {"qkv 576->960": (576, 960), "o 576->576": (576, 576),
          "gate/up 576->3072": (576, 3072), "down 1536->576": (1536, 576),
          "lm_head 576->49152": (576, 49152)}
# per decode step of the default model: 30 layers of q/k/v, o, gate/up, down, then the head
STEP_COUNTS = {"qkv 576->960": 30, "o 576->576": 30, "gate/up 576->3072": 30,
               "down 1536->576": 30, "lm_head 576->49152": 1}
# name -> (ggml type, act_quant): the "q8" rows run the same weights with 8-bit activations
TYPES = {"Q4_1": (ops.GGML_Q4_1, 0), "Q8_0": (ops.GGML_Q8_0, 0), "BF16": (ops.GGML_BF16, 0),
         "F32": (ops.GGML_F32, 0), "Q4_1 q8": (ops.GGML_Q4_1, 8),
         "Q8_0 q8": (ops.GGML_Q8_0, 8)}
POOL_BYTES = 96 << 20


def read_bandwidth() -> float:
    """GB/s of torch.sum streaming a 256 MiB fp32 tensor."""
    big = torch.ones(64 << 20)
    return big.numel() * 4 / median_seconds(lambda: big.sum(), min_time=1.0) / 1e9


def pool_size(nbytes: int) -> int:
    """Distinct weight copies to cycle through so that calls stream from DRAM."""
    return max(1, -(-POOL_BYTES // nbytes))


def ours_calls(packs: list[PackedWeight], x: torch.Tensor, y: torch.Tensor):
    return [lambda p=p: p.linear(x, out=y) for p in packs]


def torch_calls(weights: list[torch.Tensor], x: torch.Tensor):
    return [lambda w=w: F.linear(x, w) for w in weights]


def measure(shape: str, name: str, nbytes: int, weights: int, calls_m1, calls_m16) -> dict:
    """Median time of one call at M=1 and M=16, each call on the next weight copy."""
    m1 = median_seconds(cycling(calls_m1))
    m16 = median_seconds(cycling(calls_m16))
    return {"shape": shape, "type": name, "weight_bytes": nbytes, "m1_us": m1 * 1e6,
            "m16_us": m16 * 1e6, "gb_per_s": nbytes / m1 / 1e9,
            "gweights_per_s": weights / m1 / 1e9}


def cycling(fns):
    """One callable that calls the next of `fns` each time."""
    it = itertools.cycle(fns)
    return lambda: next(it)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)

    bandwidth = read_bandwidth()
    print(f"read bandwidth (torch.sum over 256 MiB fp32): {bandwidth:.1f} GB/s", flush=True)
    rows = []
    for label, (k, n) in SHAPES.items():
        dense = torch.randn(n, k, generator=gen) * 0.05
        x1, x16 = torch.randn(1, k, generator=gen), torch.randn(16, k, generator=gen)
        y1, y16 = torch.empty(1, n), torch.empty(16, n)
        for tname, (t, act_quant) in TYPES.items():
            first = PackedWeight.from_float(dense, t)
            copies = [PackedWeight(first.data.clone(), t, (n, k), act_quant) for _ in range(
                pool_size(first.nbytes))]
            rows.append(measure(label, tname, first.nbytes, n * k, ours_calls(copies, x1, y1),
                                ours_calls(copies, x16, y16)))
        for bname, dtype in (("torch bf16", torch.bfloat16), ("torch fp32", torch.float32)):
            w = dense.to(dtype)
            nbytes = w.numel() * w.element_size()
            copies = [w.clone() for _ in range(pool_size(nbytes))]
            rows.append(measure(label, bname, nbytes, n * k, torch_calls(copies, x1.to(dtype)),
                                torch_calls(copies, x16.to(dtype))))
        for r in rows[-len(TYPES) - 2:]:
            print(f"{r['shape']:>20} {r['type']:>10}  M=1 {r['m1_us']:9.1f} us "
                  f"{r['gb_per_s']:6.1f} GB/s {r['gweights_per_s']:6.2f} Gw/s   "
                  f"M=16 {r['m16_us']:9.1f} us (x{r['m16_us'] / r['m1_us']:.2f})", flush=True)

    step = {}
    for tname in [*TYPES, "torch bf16", "torch fp32"]:
        mine = [r for r in rows if r["type"] == tname]
        t1 = sum(r["m1_us"] * STEP_COUNTS[r["shape"]] for r in mine)
        t16 = sum(r["m16_us"] * STEP_COUNTS[r["shape"]] for r in mine)
        nbytes = sum(r["weight_bytes"] * STEP_COUNTS[r["shape"]] for r in mine)
        weights = sum(SHAPES[r["shape"]][0] * SHAPES[r["shape"]][1] * STEP_COUNTS[r["shape"]]
                      for r in mine)
        step[tname] = {"m1_ms": t1 / 1e3, "m16_ms": t16 / 1e3, "gb_per_s": nbytes / t1 / 1e3,
                       "gweights_per_s": weights / t1 / 1e3,
                       "fraction_of_read_bandwidth": nbytes / t1 / 1e3 / bandwidth}
    report = {"machine": machine_info(), "read_bandwidth_gb_per_s": bandwidth,
              "results": rows, "decode_step_linears": step}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "linear_bandwidth.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(out / "linear_bandwidth.md", report, args.threads)


def write_markdown(path: Path, report: dict, threads: int) -> None:
    bw = report["read_bandwidth_gb_per_s"]
    step = report["decode_step_linears"]
    bf16_rate = step["torch bf16"]["gweights_per_s"]
    lines = [
        "# linear: weight bandwidth at M=1",
        "",
        f"Command: `python benchmarks/bench_linear_bandwidth.py --threads {threads}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
        "",
        f"Read bandwidth measured in the same run (torch.sum over 256 MiB fp32): "
        f"**{bw:.1f} GB/s**. Every call streams its weights from DRAM (copies cycled).",
        "",
        "## All linears of one decode step of the default model (30 layers + LM head)",
        "",
        "| weights | M=1 (ms) | GB/s | % of read bw | G weights/s | vs torch bf16 | "
        "M=16 (ms) | M=16 / M=1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in step.items():
        lines.append(
            f"| {name} | {s['m1_ms']:.2f} | {s['gb_per_s']:.1f} | "
            f"{100 * s['fraction_of_read_bandwidth']:.0f}% | {s['gweights_per_s']:.2f} | "
            f"{s['gweights_per_s'] / bf16_rate:.1f}x | {s['m16_ms']:.2f} | "
            f"{s['m16_ms'] / s['m1_ms']:.2f} |")
    lines += [
        "",
        "## Per shape",
        "",
        "| shape | weights | bytes | M=1 (us) | GB/s | G weights/s | M=16 (us) | M=16 / M=1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['shape']} | {r['type']} | {r['weight_bytes']} | {r['m1_us']:.1f} | "
            f"{r['gb_per_s']:.1f} | {r['gweights_per_s']:.2f} | {r['m16_us']:.1f} | "
            f"{r['m16_us'] / r['m1_us']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
