"""Start-up time: what a fresh process pays before the default model answers.

Each repeat runs a new Python process that times, in order: ``import adaeagle_ext`` (torch
included), ``load()`` of the default model (GGUF header, packed weights, model build), the
tokenizer (transformers, from its cached conversion) and a first 16-token ``ar`` generation.
The model must be fetched already (``adaeagle fetch``). Medians over the repeats; writes
benchmarks/results/startup.{json,md}.

    python benchmarks/bench_startup.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402

PHASES = ("import", "load", "tokenizer", "first_generate")

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import adaeagle_ext
t1 = time.perf_counter()
pipe = adaeagle_ext.load(threads={threads}, progress=False)
t2 = time.perf_counter()
pipe.tokenizer
t3 = time.perf_counter()
pipe.generate("Name three rivers.", max_new_tokens=16)
t4 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "tokenizer": t3 - t2,
                  "first_generate": t4 - t3,
                  "torch_dynamo_imported": "torch._dynamo" in sys.modules}}))
"""


def run_once(threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    runs = []
    for i in range(args.repeats):
        runs.append(run_once(args.threads))
        print(f"run {i + 1}/{args.repeats}: " + ", ".join(
            f"{p} {runs[-1][p]:.2f} s" for p in PHASES), flush=True)
    medians = {p: statistics.median(r[p] for r in runs) for p in PHASES}
    report = {"command": "python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]),
              "machine": machine_info(), "runs": runs, "median_s": medians}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Start-up time of a fresh process (default model)", "",
             f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "",
             "| phase | median (s) |", "|---|---:|"]
    lines += [f"| {p} | {medians[p]:.2f} |" for p in PHASES]
    lines += [f"| total | {sum(medians.values()):.2f} |", ""]
    (out / "startup.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
