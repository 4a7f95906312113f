"""One module per op; each defines `cases(device) -> list[Case]`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Case:
    op: str
    shape: str
    ours: Callable[[], object]
    baseline: Callable[[], object]
    baseline_name: str
