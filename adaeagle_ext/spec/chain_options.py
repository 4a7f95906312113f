"""Options of the adaptive chain and tree methods: ``"ddd:-0.6"``, ``"maxconf:0.4,k_max=6"``,
``"eagle2:top_k=8,depth=6"``, ...

A bare value is the method's threshold (for the methods that have one); ``key=value`` parts set
named options. Every value is
checked here, so a bad spec fails when the method is built, with the argument named.
"""

from __future__ import annotations

import math

DEFAULT_K_MAX = 8


def parse_options(method: str, spec: str | None, keys: tuple[str, ...],
                  integer: bool = False) -> dict[str, float]:
    """``spec`` -> {key: number} for the allowed ``keys`` (a bare value sets ``keys[0]`` when it
    is ``"threshold"``); with ``integer`` every value must be a whole number and comes as an int.

    Raises:
        ValueError: an unknown key, a repeated key, a value that is not a finite number, or
            (``integer``) not a whole one.
    """
    out: dict[str, float] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.rpartition("=")
        if not eq:
            if keys[0] != "threshold":
                expected = ", ".join(k + "=" for k in keys)
                raise ValueError(f"{method} spec {spec!r}: expected {expected}")
            key = "threshold"
        if key not in keys:
            raise ValueError(f"{method} spec {spec!r}: unknown option {key!r}; expected "
                             f"{', '.join(keys)}")
        if key in out:
            raise ValueError(f"{method} spec {spec!r}: {key} given twice")
        x = number(method, key, value)
        if integer:
            if x != int(x):
                raise ValueError(f"{method} {key} must be an integer, got {value!r}")
            x = int(x)
        out[key] = x
    return out


def number(method: str, key: str, value) -> float:
    """``value`` as a finite float; ValueError naming ``method`` and ``key`` otherwise."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method} {key} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{method} {key} must be finite, got {value!r}")
    return x


def check_k_max(method: str, k_max) -> int:
    """k_max as an int in [1, 63] (a chain plus its root fills at most 64 tree nodes)."""
    k = number(method, "k_max", k_max)
    if k != int(k) or not 1 <= k <= 63:
        raise ValueError(f"{method} k_max must be an integer in [1, 63], got {k_max!r}")
    return int(k)


def check_log_prob_threshold(method: str, threshold) -> float:
    """A cumulative log-probability threshold: a finite number <= 0."""
    t = number(method, "threshold", threshold)
    if t > 0:
        raise ValueError(f"{method} threshold is a log-probability and must be <= 0 "
                         f"(e.g. {method}:-0.6), got {threshold!r}")
    return t


def check_probability_threshold(method: str, threshold) -> float:
    """A probability threshold in [0, 1]."""
    t = number(method, "threshold", threshold)
    if not 0 <= t <= 1:
        raise ValueError(f"{method} threshold is a probability and must be in [0, 1], "
                         f"got {threshold!r}")
    return t
