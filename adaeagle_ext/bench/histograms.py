"""Which per-step histograms a BenchRun shows (overall), shared by the tables and the plots."""

from __future__ import annotations

from adaeagle_ext.bench.metrics import OVERALL
from adaeagle_ext.bench.runner import BenchRun


def ldlp_methods(run: BenchRun) -> list[str]:
    """The methods whose turns carry LDLP predictions (adaeagle, adaeagle-ddd, adaeagle-tree)."""
    return [m for m in run.methods if run.summaries[m][OVERALL].ldlp is not None]


def oracle_methods(run: BenchRun) -> list[str]:
    """The ``oracle`` runs (any options) with draft lengths."""
    return [m for m in run.methods if m.partition(":")[0] == "oracle"
            and run.summaries[m][OVERALL].draft_hist]


def _overall_hists(run: BenchRun, attr: str) -> dict[str, dict[int, int]]:
    """{method: its overall histogram ``attr`` of Summary} for the methods that record one."""
    return {m: getattr(run.summaries[m][OVERALL], attr) for m in run.methods
            if getattr(run.summaries[m][OVERALL], attr)}


def draft_hists(run: BenchRun) -> dict[str, dict[int, int]]:
    """{method: overall draft-length histogram} for the methods that record one."""
    return _overall_hists(run, "draft_hist")


def accept_hists(run: BenchRun) -> dict[str, dict[int, int]]:
    """{method: overall accepted-length histogram} for the methods that record one."""
    return _overall_hists(run, "accept_hist")


def predicted_hists(run: BenchRun) -> dict[str, dict[int, int]]:
    """{label: histogram}: each LDLP method's predicted lengths, then each oracle run's draft
    lengths (the ideal label on its own trajectory)."""
    out = {f"{m} (predicted)": run.summaries[m][OVERALL].ldlp["predicted_hist"]
           for m in ldlp_methods(run)}
    if out:
        out.update({f"{m} (ideal)": run.summaries[m][OVERALL].draft_hist
                    for m in oracle_methods(run)})
    return out
