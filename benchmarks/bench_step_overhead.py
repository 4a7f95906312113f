"""Where a decode step's time goes: the extension's ops (each timed around its Python wrapper)
and the rest, i.e. the Python of the generation loop, the strategy and the model's forward.

Each method generates the same chat prompt several times (default model, bf16); the report is
the median per decode step over the runs. The rest is what the Python layer costs every step,
on top of the kernels.

    python benchmarks/bench_step_overhead.py [--methods ar,chain:1,aded] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402

from adaeagle_ext import ops  # noqa: E402
from adaeagle_ext.api import load  # noqa: E402

TIMED_OPS = ("decoder_layers", "linear", "eagle_head_layer", "tree_attention", "rms_norm",
             "build_tree", "kv_compact", "verify_greedy", "verify_sampling", "rope_store_kv",
             "aded_draft", "ldlp_mlp")
PROMPT = "Explain how a refrigerator works, step by step, in simple words."


def time_ops(spent: dict[str, float]) -> None:
    """Wraps the ops module's functions so that each call adds its wall time to spent[name]."""
    for name in TIMED_OPS:
        fn = getattr(ops, name, None)
        if fn is None:
            continue

        def timed(*args, _fn=fn, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

        setattr(ops, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ar,chain:1,aded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pipe = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    spent: dict[str, float] = {}
    time_ops(spent)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()))
    for method in args.methods.split(","):
        pipe.generate(PROMPT, max_new_tokens=16, method=method)  # warm-up
        per_step: dict[str, list[float]] = {}
        for _ in range(args.runs):
            spent.clear()
            stats = pipe.generate(PROMPT, max_new_tokens=args.max_new_tokens, method=method).stats
            steps = stats.decode_steps
            row = {name: t * 1e3 / steps for name, t in spent.items() if t > 0}
            row["rest (Python)"] = (stats.decode_s - sum(spent.values())) * 1e3 / steps
            row["step"] = stats.decode_s * 1e3 / steps
            for name, ms in row.items():
                per_step.setdefault(name, []).append(ms)
        parts = {name: statistics.median(v) for name, v in per_step.items()}
        step = parts.pop("step")
        print(f"{method}: {step:.2f} ms per step; " + ", ".join(
            f"{name} {ms:.2f} ({ms / step:.0%})" for name, ms in
            sorted(parts.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
