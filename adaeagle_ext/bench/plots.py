"""The PNGs of a BenchRun: speedup and tau per task, draft / accepted / predicted-length
histograms, draft-verify time split (matplotlib, imported on use)."""

from __future__ import annotations

from pathlib import Path

from adaeagle_ext.bench.histograms import (
    accept_hists,
    draft_hists,
    oracle_methods,
    predicted_hists,
)
from adaeagle_ext.bench.metrics import OVERALL
from adaeagle_ext.bench.runner import BenchRun


def _color(i: int):
    """A distinct colour for up to 20 series (matplotlib's default cycle repeats after 10)."""
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def _legend(ax) -> None:
    """Legend beside the axes, where it cannot cover bars."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _grouped_bars(ax, run: BenchRun, methods, value, ylabel):
    cols = [*run.tasks, OVERALL]
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        per = run.summaries[m]
        ys = [value(per[c]) if c in per and value(per[c]) is not None else 0 for c in cols]
        ax.bar([j + i * width for j in range(len(cols))], ys, width, label=m, color=_color(i))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=20)
    ax.set_ylabel(ylabel)
    _legend(ax)


def _hist_bars(ax, hists: dict[str, dict[int, int]], xlabel: str, title: str):
    """Side-by-side bars of each histogram, normalised to its share of steps."""
    width = 0.8 / max(len(hists), 1)
    for i, (label, h) in enumerate(hists.items()):
        total = sum(h.values())
        ks = sorted(h)
        ax.bar([k + i * width for k in ks], [h[k] / total for k in ks], width, label=label,
               color=_color(i))
    keys = sorted({k for h in hists.values() for k in h})
    ax.set_xticks([k + 0.4 - width / 2 for k in keys], [str(k) for k in keys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of steps")
    ax.set_title(title)
    _legend(ax)


def _time_split(ax, run: BenchRun):
    timed = [m for m in run.methods if run.summaries[m][OVERALL].draft_frac is not None]
    d = [run.summaries[m][OVERALL].draft_frac for m in timed]
    v = [run.summaries[m][OVERALL].verify_frac for m in timed]
    ax.bar(timed, d, label="draft")
    ax.bar(timed, v, bottom=d, label="verify (target forward + accept)")
    done = [a + b for a, b in zip(d, v, strict=True)]
    ax.bar(timed, [1 - x for x in done], bottom=done, label="other (prefill, loop)")
    ax.set_ylabel("share of wall time")
    ax.set_title("Draft / verify time split")
    ax.legend(fontsize=8)


def write_plots(run: BenchRun, out: Path) -> list[str]:
    """Write the PNGs under ``out``; returns their file names in the order results.md shows
    them. ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtype = run.settings.get("dtype", "")

    def speedup(ax):
        _grouped_bars(ax, run, run.methods, lambda s: s.speedup, "speedup over ar")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"Speedup per task ({dtype})")

    def tau(ax):
        _grouped_bars(ax, run, run.methods, lambda s: s.tau, "τ (tokens / target forward)")
        ax.set_title(f"Mean accepted tokens per step ({dtype})")

    plots = [("speedup.png", (11, 4), speedup), ("tau.png", (11, 4), tau)]
    for name, hists, xlabel, title in [
            ("draft_hist.png", draft_hists(run), "draft tokens per step", "Draft-length histogram"),
            ("accept_hist.png", accept_hists(run), "tokens accepted per step (bonus included)",
             "Accepted-length histogram"),
            ("predicted_hist.png", predicted_hists(run), "draft length",
             "LDLP predicted lengths" + (" vs the oracle's" if oracle_methods(run) else ""))]:
        if hists:
            plots.append((name, (9, 4), lambda ax, h=hists, x=xlabel, t=title:
                          _hist_bars(ax, h, x, t)))
    plots.append(("time_split.png", (7, 4), lambda ax: _time_split(ax, run)))
    for name, size, draw in plots:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    return [name for name, *_ in plots]
