"""What a target pass over M tokens costs in its linear layers: every `ops.linear` call of one
forward of the default model (30 layers of fused q/k/v, o, fused gate/up and down, then the LM
head) on the model's own packed GGUF weights, for M = 1..8 rows.

A speculative step verifies M = 1 + drafts tokens in one pass, so the ratio of these times to
M = 1 is what each verified draft costs. The widths are timed round-robin within one process
(machine speed drifts between runs) and the median per width is reported. Writes
benchmarks/results/verify_widths.{json,md}.

    python benchmarks/bench_verify_widths.py [--threads 2] [--rows 1,2,3,4,5,6,8] [--rounds 15]

With ``--act-quant 8`` it times float activations against 8-bit activation blocks (the same
weights with ``act_quant=8``), alternating, and writes verify_widths_q8.{json,md} instead.
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
from adaeagle_ext.api import load  # noqa: E402

TYPE_NAMES = {ops.GGML_Q4_0: "Q4_0", ops.GGML_Q4_1: "Q4_1", ops.GGML_Q8_0: "Q8_0",
              ops.GGML_BF16: "BF16", ops.GGML_F16: "F16", ops.GGML_F32: "F32"}


def forward_linears(model) -> list:
    """The packed weights one forward runs, in order (the LM head last)."""
    weights = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        weights += [attn.qkv_packed, attn.o_proj.weight_packed, mlp.gate_up_packed,
                    mlp.down_proj.weight_packed]
    weights.append(model._head().weight_packed)
    if any(w is None for w in weights):
        raise SystemExit("the model does not run fused packed q/k/v and gate/up")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,2,3,4,5,6,8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--act-quant", type=int, default=0, choices=[0, 8])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    widths = [int(m) for m in args.rows.split(",")]
    model = load(None, dtype="bfloat16", threads=args.threads, progress=False).model
    weights = forward_linears(model)
    gen = torch.Generator().manual_seed(0)
    xs = {m: [torch.randn(m, w.shape[1], generator=gen) for w in weights] for m in widths}
    ys = {m: [torch.empty(m, w.shape[0]) for w in weights] for m in widths}

    def forward(m: int, ws=weights) -> None:
        for w, x, y in zip(ws, xs[m], ys[m], strict=True):
            w.linear(x, out=y)

    if args.act_quant:
        compare_act_quant(args, widths, weights, forward)
        return
    times: dict[int, list[float]] = {m: [] for m in widths}
    for m in widths:
        forward(m)
    for _ in range(args.rounds):
        for m in widths:
            start = time.perf_counter()
            forward(m)
            times[m].append(time.perf_counter() - start)
    ms = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    types: dict[str, int] = {}
    for w in weights:
        name = TYPE_NAMES.get(w.ggml_type, str(w.ggml_type))
        types[name] = types.get(name, 0) + 1
    report = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "weight_types": types, "forward_linears_ms": ms,
              "ratio_to_m1": {m: ms[m] / ms[widths[0]] for m in widths}}
    for m in widths:
        print(f"M={m}: {ms[m]:6.2f} ms ({ms[m] / ms[widths[0]]:.2f}x M={widths[0]})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify_widths.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Linear layers of one forward of the default model, by rows M",
        "",
        f"Command: `python benchmarks/bench_verify_widths.py --threads {args.threads} "
        f"--rows {args.rows} --rounds {args.rounds}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
        "",
        f"Weights: the GGUF's own ({', '.join(f'{n} x {t}' for t, n in types.items())} "
        "calls per forward). Median of the rounds; widths timed round-robin.",
        "",
        "| M | ms per forward | vs M=1 |",
        "|---:|---:|---:|",
        *[f"| {m} | {ms[m]:.2f} | {ms[m] / ms[widths[0]]:.2f} |" for m in widths],
    ]
    (out / "verify_widths.md").write_text("\n".join(lines) + "\n")


def compare_act_quant(args, widths: list[int], weights: list, forward) -> None:
    """Float activations against act_quant=8 on the same weights, alternating per round."""
    q8 = [w.with_act_quant(args.act_quant) for w in weights]
    modes = {"float": weights, "q8": q8}
    times = {(mode, m): [] for mode in modes for m in widths}
    for m in widths:
        for ws in modes.values():
            forward(m, ws)
    for r in range(args.rounds):
        for m in widths:
            for mode in (modes if r % 2 == 0 else list(modes)[::-1]):
                start = time.perf_counter()
                forward(m, modes[mode])
                times[(mode, m)].append(time.perf_counter() - start)
    ms = {mode: {m: statistics.median(times[(mode, m)]) * 1e3 for m in widths} for mode in modes}
    report = {"machine": machine_info(), "threads": args.threads, "rounds": args.rounds,
              "act_quant": args.act_quant, "forward_linears_ms": ms}
    lines = [
        "# Linear layers of one forward of the default model: float vs 8-bit activations",
        "",
        f"Command: `python benchmarks/bench_verify_widths.py --threads {args.threads} "
        f"--rows {args.rows} --rounds {args.rounds} --act-quant {args.act_quant}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
        "",
        "Median of the rounds; the two modes alternate within each round.",
        "",
        "| M | float activations (ms) | act_quant=8 (ms) | speed-up |",
        "|---:|---:|---:|---:|",
        *[f"| {m} | {ms['float'][m]:.2f} | {ms['q8'][m]:.2f} | "
          f"{ms['float'][m] / ms['q8'][m]:.2f}x |" for m in widths],
    ]
    print("\n".join(lines[-len(widths) - 2:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify_widths_q8.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "verify_widths_q8.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
