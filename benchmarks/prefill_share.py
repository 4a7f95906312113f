"""Where `ar`'s Spec-Bench wall time goes: prefill (the prompt, in 64-token chunks) against
decoding, per task. Spec-Bench's tokens/s counts both, so this is the share that no draft
strategy can speed up.

Runs the first turn(s) of ``--per-category`` questions per task with ``ar`` (bf16, the
harness's conversation handling: each turn sees the previous turns and answers) and writes
benchmarks/results/prefill_share.{json,md} (``prefill_share_q8.*`` with ``--act-quant 8``).

    python benchmarks/prefill_share.py [--per-category 2] [--max-new-tokens 128] [--threads 2]
                                       [--act-quant 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402

from adaeagle_ext.api import load  # noqa: E402
from adaeagle_ext.bench.prompts import DEFAULT_PROMPTS, load_questions, select  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--act-quant", type=int, default=0, choices=[0, 8],
                        help="8: 8-bit activation blocks in every packed layer (load's act_quant)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    pipe = load(None, dtype="bfloat16", threads=args.threads, progress=False,
                act_quant=args.act_quant)
    questions = select(load_questions(DEFAULT_PROMPTS), per_category=args.per_category)
    per_task: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for q in questions:
        messages = []
        for turn in q.turns:
            messages.append({"role": "user", "content": turn})
            res = pipe.generate(messages, max_new_tokens=args.max_new_tokens)
            messages.append({"role": "assistant", "content": res.text})
            row = per_task[q.task]
            row["prompt_tokens"] += res.stats.prompt_tokens
            row["new_tokens"] += res.stats.new_tokens
            row["prefill_s"] += res.stats.prefill_s
            row["decode_s"] += res.stats.decode_s
        print(f"{q.task} {q.qid} done", flush=True)
    total: dict[str, float] = defaultdict(float)
    for row in per_task.values():
        for k, v in row.items():
            total[k] += v
    rows = {**per_task, "overall": total}
    report = {"command": "python benchmarks/prefill_share.py " + " ".join(sys.argv[1:]),
              "machine": machine_info(), "tasks": {k: dict(v) for k, v in rows.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "prefill_share" + ("_q8" if args.act_quant else "")
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    mode = ", act_quant=8" if args.act_quant else ""
    lines = [f"# `ar` on Spec-Bench: prefill against decoding{mode}", "",
             f"Command: `{report['command']}`", "", f"Machine: {report['machine']}", "",
             "| task | prompt tokens | prefill (s) | prefill tok/s | new tokens | decode (s) | "
             "decode tok/s | prefill share of wall time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task, r in rows.items():
        wall = r["prefill_s"] + r["decode_s"]
        lines.append(f"| {task} | {r['prompt_tokens']:.0f} | {r['prefill_s']:.2f} | "
                     f"{r['prompt_tokens'] / r['prefill_s']:.0f} | {r['new_tokens']:.0f} | "
                     f"{r['decode_s']:.2f} | {r['new_tokens'] / r['decode_s']:.1f} | "
                     f"{r['prefill_s'] / wall:.0%} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
