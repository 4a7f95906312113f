"""Write a BenchRun: results.json, results.md, outputs.jsonl and the PNGs (``plots.py``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from adaeagle_ext.bench.histograms import (
    accept_hists,
    ldlp_methods,
    oracle_methods,
    predicted_hists,
)
from adaeagle_ext.bench.metrics import OVERALL
from adaeagle_ext.bench.plots import write_plots
from adaeagle_ext.bench.runner import BenchRun


def machine_info() -> dict:
    """CPU, threads, versions and git commit, recorded beside every result."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "adaeagle_ext", "llama_cpp_python"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return dict(cpu=cpu, logical_cpus=os.cpu_count(), threads=torch.get_num_threads(),
                versions=versions, git_commit=commit,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def _fmt(x, spec=".2f", none="–") -> str:
    return none if x is None else format(x, spec)


def markdown(run: BenchRun, info: dict) -> str:
    """Tables: speedup per task, tau and draft statistics, losslessness."""
    cols = [*run.tasks, OVERALL]
    s = run.settings
    lines = [f"Machine: {info.get('cpu')}, {info.get('threads')} threads, dtype "
             f"{s.get('dtype', '?')}, torch {info['versions'].get('torch')}, transformers "
             f"{info['versions'].get('transformers', '–')}, commit {info.get('git_commit')}"
             + (f" (at the end: {info['git_commit_at_end']})" if "git_commit_at_end" in info
                else "") + ".",
             f"{s['questions']} questions, max_new_tokens {s['max_new_tokens']}, temperature "
             f"{s['temperature']}, warmup {s['warmup']}.", "",
             "Speedup over `ar` (mean per-question tokens/s ratio, Spec-Bench):", "",
             "| method | " + " | ".join(cols) + " | tok/s | τ |",
             "|---" * (len(cols) + 3) + "|"]
    for m in run.methods:
        per = run.summaries[m]
        cells = [_fmt(per[c].speedup) if c in per else "–" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | {per[OVERALL].tokens_per_s:.1f} | {_fmt(per[OVERALL].tau)} |")
    lines += ["", "τ per task (mean tokens per target forward, bonus included):", "",
              "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in run.methods:
        per = run.summaries[m]
        lines.append(f"| {m} | " + " | ".join(
            _fmt(per[c].tau) if c in per else "–" for c in cols) + " |")
    lines += ["", "Drafting (overall): draft tokens per step, share of wall time drafting / "
              "verifying:", "", "| method | draft tok/step | draft time | verify time |",
              "|---|---|---|---|"]
    for m in run.methods:
        o = run.summaries[m][OVERALL]
        lines.append(f"| {m} | {_fmt(o.draft_per_step)} | {_fmt(o.draft_frac, '.1%')} | "
                     f"{_fmt(o.verify_frac, '.1%')} |")
    accept = accept_hists(run)
    if accept:
        lines += ["", "Accepted tokens per step (overall; share of steps, bonus token included):",
                  "", *_hist_table(accept, "method")]
    lines += _ldlp_markdown(run)
    if run.lossless is not None:
        lines += ["", "Losslessness at T=0 (output token-identical to `ar`; first divergence "
                  "with the target's top-2 logit gap there):", "",
                  "| method | identical | divergences (question/turn/position: top-2 gap) |",
                  "|---|---|---|"]
        for m, r in run.lossless.items():
            divs = "; ".join(f"q{d['qid']}/t{d['turn']}/p{d['position']}: "
                             f"{_fmt(d['top2_gap'], '.3g')}" for d in r["divergences"])
            lines.append(f"| {m} | {r['identical']}/{r['total']} ({r['rate']:.0%}) | "
                         f"{divs or '–'} |")
    return "\n".join(lines) + "\n"


def _hist_table(hists: dict[str, dict[int, int]], label: str) -> list[str]:
    """Markdown rows: one per histogram, a column per value seen, cells = share of steps."""
    keys = sorted({k for h in hists.values() for k in h})
    lines = [f"| {label} | " + " | ".join(str(k) for k in keys) + " | steps |",
             "|---" + "|---:" * (len(keys) + 1) + "|"]
    for name, h in hists.items():
        total = sum(h.values())
        cells = [_fmt(h.get(k, 0) / total if total else None, ".1%") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total} |")
    return lines


def _ldlp_markdown(run: BenchRun) -> list[str]:
    methods = ldlp_methods(run)
    if not methods:
        return []
    cols = [*run.tasks, OVERALL]
    lines = ["", "LDLP prediction error (overall): per step, the predicted draft length against "
             "the drafts accepted (accepted tokens − 1). `adaeagle` and `adaeagle-tree` never "
             "accept more drafts than predicted, so under-prediction cannot show there (a fully "
             "accepted step counts as exact); `adaeagle-ddd` can draft past the prediction.", "",
             "| method | steps | MAE | bias | under | exact | over | mean predicted | "
             "mean accepted drafts |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        e = run.summaries[m][OVERALL].ldlp
        lines.append(f"| {m} | {e['steps']} | {e['mae']:.2f} | {e['bias']:+.2f} | "
                     f"{e['under']:.1%} | {e['exact']:.1%} | {e['over']:.1%} | "
                     f"{_fmt(e['mean_predicted'])} | {_fmt(e['mean_accepted_drafts'])} |")
    lines += ["", "LDLP MAE (bias) per task:", "",
              "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        per = run.summaries[m]
        cells = [f"{per[c].ldlp['mae']:.2f} ({per[c].ldlp['bias']:+.2f})"
                 if c in per and per[c].ldlp and per[c].ldlp["steps"] else "–" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    oracle = oracle_methods(run)
    note = (" next to the oracle's draft lengths (the ideal label: what the target accepts, "
            "capped at its k_max and the tokens left; a different trajectory, so compare the "
            "distributions, not steps)" if oracle else
            " (add `oracle` to the methods for the ideal lengths)")
    lines += ["", f"Predicted draft lengths (overall; share of steps){note}:", "",
              *_hist_table(predicted_hists(run), "method")]
    return lines


def write_report(run: BenchRun, out_dir: str | Path, extra: dict | None = None,
                 info: dict | None = None) -> Path:
    """Write everything under ``out_dir``; returns the markdown path. Plots are skipped with a
    note in results.md when matplotlib is missing.

    ``info``: ``machine_info()`` taken when the run started (the code it ran); when the commit
    has changed since, the one at the end is recorded too, as ``git_commit_at_end``. Default:
    taken now."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = machine_info()
    if info is None:
        info = now
    elif now["git_commit"] != info.get("git_commit"):
        info = dict(info, git_commit_at_end=now["git_commit"])
    data = dict(settings=run.settings, machine=info, methods=run.methods, tasks=run.tasks,
                summaries={m: {t: s.as_dict() for t, s in per.items()}
                           for m, per in run.summaries.items()},
                lossless=run.lossless,
                questions={m: [dict(qid=q.qid, task=q.task, new_tokens=q.new_tokens,
                                    wall_s=q.wall_s, tokens_per_s=q.tokens_per_s)
                               for q in qs] for m, qs in run.results.items()},
                **(extra or {}))
    (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    with (out / "outputs.jsonl").open("w") as f:
        for m, qs in run.results.items():
            for q in qs:
                row = dict(method=m, qid=q.qid, task=q.task, turns=[t.token_ids for t in q.turns])
                if all(t.accepted is not None for t in q.turns):
                    row["accepted"] = [t.accepted for t in q.turns]
                if all(t.predicted is not None for t in q.turns):
                    row["predicted"] = [t.predicted for t in q.turns]
                f.write(json.dumps(row) + "\n")
    md = markdown(run, info)
    try:
        md += "\n" + "\n".join(f"![{p[:-4]}]({p})" for p in write_plots(run, out)) + "\n"
    except ImportError:
        md += "\n(plots skipped: matplotlib is not installed)\n"
    (out / "results.md").write_text(md)
    return out / "results.md"
