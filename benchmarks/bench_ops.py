"""Times every adaeagle op against the plain-PyTorch code an engine would otherwise run.

Each module in benchmarks/op_cases/ provides `cases(device) -> list[Case]`. Ours and the
baseline are timed in 5 alternating rounds (a median over 0.1 s each); the speed-up is the
median of the rounds' ratios. Results go to benchmarks/results/ops_<device>.json and .md with
the machine, threads and versions.

    python benchmarks/bench_ops.py [--device cpu] [--threads 2] [--only kv_compact,...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info, paired_medians  # noqa: E402
from op_cases import Case  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default="", help="comma-separated op names")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = {name for name in args.only.split(",") if name}

    rows = []
    for module_path in sorted((HERE / "op_cases").glob("[!_]*.py")):
        if only and module_path.stem not in only:
            continue
        module = importlib.import_module(f"op_cases.{module_path.stem}")
        for case in module.cases(args.device):
            case: Case
            ours, baseline, speedup = paired_medians(case.ours, case.baseline)
            rows.append({
                "op": case.op, "shape": case.shape, "baseline": case.baseline_name,
                "ours_us": ours * 1e6, "baseline_us": baseline * 1e6, "speedup": speedup,
            })
            r = rows[-1]
            print(f"{r['op']:>18} {r['shape']:<34} ours {r['ours_us']:9.1f} us   "
                  f"{r['baseline']} {r['baseline_us']:9.1f} us   x{r['speedup']:.2f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"{args.device}" + (f"_{'_'.join(sorted(only))}" if only else "")
    report = {"machine": machine_info(), "device": args.device, "results": rows}
    (out / f"ops_{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# adaeagle ops vs PyTorch ({args.device})",
        "",
        "Command: `python benchmarks/bench_ops.py "
        f"--device {args.device} --threads {args.threads}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
        "",
        "Medians of 5 alternating rounds; the speed-up is the median of the rounds' ratios.",
        "",
        "| op | shape | ours (us) | baseline | baseline (us) | speedup |",
        "|---|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['op']} | {r['shape']} | {r['ours_us']:.1f} | {r['baseline']} | "
        f"{r['baseline_us']:.1f} | {r['speedup']:.2f}x |" for r in rows
    ]
    (out / f"ops_{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
