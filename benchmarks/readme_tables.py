"""Print the markdown blocks pasted into README.md and benchmarks/README.md from one bench run.

    python benchmarks/readme_tables.py benchmarks/results/specbench_<name>[/results.json]

Blocks: the command, the overall table (method, speedup over ``ar``, tok/s, τ, identical to
``ar``), the LDLP's prediction error, and image links to the run's PNGs, once with paths from
the repository root (README.md) and once from ``benchmarks/`` (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("speedup.png", "tau.png", "draft_hist.png", "accept_hist.png", "predicted_hist.png",
         "time_split.png")
OVERALL = "overall"
BASELINE = "ar"


def _fmt(x, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def overall_table(data: dict) -> list[str]:
    """Rows of | method | speedup over `ar` | tok/s | τ | identical to `ar` | (``data``: a
    results.json)."""
    lossless = data.get("lossless") or {}
    lines = ["| method | speedup over `ar` | tok/s | τ | identical to `ar` |",
             "|---|---:|---:|---:|---:|"]
    for m in data["methods"]:
        o = data["summaries"][m][OVERALL]
        same = lossless.get(m)
        ident = f"{same['identical']}/{same['total']}" if same else "–"
        lines.append(f"| {m} | {_fmt(o['speedup'])} | {o['tokens_per_s']:.1f} | "
                     f"{_fmt(o['tau'])} | {ident} |")
    return lines


def ldlp_table(data: dict) -> list[str]:
    """Rows of the LDLP's overall error per method that has one (empty when none has)."""
    rows = [(m, data["summaries"][m][OVERALL].get("ldlp")) for m in data["methods"]]
    rows = [(m, e) for m, e in rows if e]
    if not rows:
        return []
    lines = ["| method | steps | MAE | bias | under | exact | over | mean predicted | "
             "mean accepted drafts |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, e in rows:
        lines.append(f"| {m} | {e['steps']} | {e['mae']:.2f} | {e['bias']:+.2f} | "
                     f"{e['under']:.1%} | {e['exact']:.1%} | {e['over']:.1%} | "
                     f"{_fmt(e['mean_predicted'])} | {_fmt(e['mean_accepted_drafts'])} |")
    return lines


def image_links(results_dir: Path, base: Path) -> list[str]:
    """``![name](path)`` for each PNG of the run, ``path`` relative to ``base``."""
    rel = Path(os.path.relpath(results_dir.resolve(), base.resolve()))
    return [f"![{p[:-4]}]({(rel / p).as_posix()})" for p in PLOTS if (results_dir / p).is_file()]


def blocks(results: Path) -> str:
    """All blocks as one markdown text; ``results``: results.json or its directory."""
    path = results / "results.json" if results.is_dir() else results
    data = json.loads(path.read_text())
    if not path.resolve().is_relative_to(REPO):
        print(f"note: {path.parent} is outside the repository; the image links will not resolve "
              "from the READMEs", file=sys.stderr)
    out = []
    command = data.get("settings", {}).get("command")
    if command:
        out += ["Command:", "", "```", command, "```", ""]
    out += ["Overall (README.md and benchmarks/README.md):", "", *overall_table(data), ""]
    ldlp = ldlp_table(data)
    if ldlp:
        out += ["LDLP prediction error (predicted draft length vs drafts accepted per step):", "",
                *ldlp, ""]
    out += ["Plots for README.md (paths from the repository root):", "",
            *image_links(path.parent, REPO), "",
            "Plots for benchmarks/README.md:", "", *image_links(path.parent, REPO / "benchmarks")]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results.json of `adaeagle bench`, or its folder")
    args = ap.parse_args(argv)
    try:
        text = blocks(args.results)
    except (OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot read a bench result from {args.results}: {e!r}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
