"""Offline proxy of ADED's acceptance: drafts trees along reference responses (teacher forcing:
the "target" is taken to emit the reference text) and counts how many drafted tokens match.

    python benchmarks/aded_proxy_tau.py --tokenizer MODEL.gguf|DIR --texts FILE.json[l]
        [--table NAME=PATH ...] [--records 100]

tau = mean tokens committed per step (matched drafts + the bonus token), as with a real target
whose greedy output is the reference. Writes benchmarks/results/aded_proxy_tau.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402

from adaeagle_ext.drafters.aded import AdedDrafter  # noqa: E402
from adaeagle_ext.drafters.trigram import TrigramTable  # noqa: E402
from adaeagle_ext.train.build_trigram import load_tokenizer  # noqa: E402


def accepted_along(parents: list[int], tokens: list[int], truth: list[int]) -> int:
    """Drafts accepted when the target emits `truth` next (greedy tree walk)."""
    node, n = 0, 0
    while n < len(truth):
        child = next((i for i in range(node + 1, len(parents))
                      if parents[i] == node and tokens[i] == truth[n]), None)
        if child is None:
            break
        node, n = child, n + 1
    return n


def run(drafter: AdedDrafter, pairs: list[tuple[list[int], list[int]]]) -> dict:
    steps = committed = nodes = 0
    seconds = 0.0
    for prompt, response in pairs:
        drafter.reset(prompt + response[:1])
        pos = 1
        while pos < len(response):
            t0 = time.perf_counter()
            parents, tokens = drafter.propose()
            seconds += time.perf_counter() - t0
            n = accepted_along(parents.tolist(), tokens.tolist(), response[pos:])
            new = response[pos:pos + n + 1]
            drafter.observe(new)
            pos += len(new)
            steps += 1
            committed += len(new)
            nodes += len(parents)
    return {"tau": committed / steps, "steps": steps, "mean_tree_nodes": nodes / steps,
            "propose_ms": 1e3 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--texts", required=True, help="records with instruction/output fields")
    parser.add_argument("--table", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    tok = load_tokenizer(args.tokenizer)
    records = [json.loads(line) for line in open(args.texts)] if args.texts.endswith(
        ".jsonl") else json.load(open(args.texts))
    pairs = []
    for r in records[: args.records]:
        prompt = " ".join(r[k] for k in ("instruction", "input") if r.get(k))
        pairs.append((tok.encode(prompt), tok.encode(r.get("output") or r.get("response"))))
    configs = [("no table", None, 0)] + [
        (name, path, 0) for name, path in (t.split("=", 1) for t in args.table)]
    configs += [(f"{configs[-1][0]}, prompt_window=16", configs[-1][1], 16)]
    rows = []
    for name, path, window in configs:
        table = TrigramTable.load(path, len(tok)) if path else None
        drafter = AdedDrafter(table, len(tok), prompt_window=window)
        rows.append({"config": name, **run(drafter, pairs)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    report = {"machine": machine_info(), "texts": args.texts, "records": len(pairs),
              "results": rows}
    (out / "aded_proxy_tau.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# ADED offline proxy acceptance (teacher-forced on reference responses)", "",
             f"Texts: `{Path(args.texts).name}`, first {len(pairs)} records; "
             "150 iterations, top 24 paths, <= 64 nodes.", "",
             "| config | tau | steps | mean tree nodes | propose (ms) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['tau']:.3f} | {r['steps']} | {r['mean_tree_nodes']:.1f} | "
              f"{r['propose_ms']:.3f} |" for r in rows]
    (out / "aded_proxy_tau.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
