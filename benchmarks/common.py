"""Shared benchmark helpers: timing, a description of the machine and versions, and the
Spec-Bench questions."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], warmup: int = 3, min_time: float = 0.3,
                   max_iters: int = 2000) -> float:
    """Median wall time of one call, over repeats that last at least `min_time` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < 5 or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_medians(ours: Callable[[], object], baseline: Callable[[], object], rounds: int = 5,
                   min_time: float = 0.1) -> tuple[float, float, float]:
    """Median call times of `ours` and `baseline` timed in alternating rounds (each round a
    `median_seconds` of both), and the median over rounds of baseline / ours. A noisy machine
    then slows both sides of a round alike instead of skewing the ratio."""
    ours_t, base_t, ratios = [], [], []
    for _ in range(rounds):
        ours_t.append(median_seconds(ours, min_time=min_time))
        base_t.append(median_seconds(baseline, min_time=min_time))
        ratios.append(base_t[-1] / ours_t[-1])
    return statistics.median(ours_t), statistics.median(base_t), statistics.median(ratios)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(__file__), check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    """Machine, thread count and versions, recorded beside every result."""
    import adaeagle_ext

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if adaeagle_ext.extension_available():
        info["build"] = adaeagle_ext.build_info()
    return info


def spec_bench_first_turns(per_category: int) -> list[str]:
    """The first turns of the first ``per_category`` Spec-Bench questions of each of its 13
    categories (this workplace's ``shared/data/spec_bench/question.jsonl``), category by
    category."""
    from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

    path = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"
    by_category: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        q = json.loads(line)
        by_category.setdefault(q["category"], []).append(q["turns"][0])
    return [t for turns in by_category.values() for t in turns[:per_category]]
