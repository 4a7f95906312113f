"""Shared fixtures: the device list (CUDA cases skip without a GPU), the tiny target and head of
the exact-distribution (T > 0) tests, the default model, and the hypothesis profiles."""

from __future__ import annotations

import pytest
import torch
from eagle_fixtures import random_head, tiny_target
from exact_sampling import VOCAB

import adaeagle_ext

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and adaeagle_ext.extension_available()
                 and adaeagle_ext.build_info()["cuda"]),
            reason="needs a GPU and an extension built with CUDA",
        ),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def sampling_model():
    """The VOCAB-token random target of the exact-distribution tests (exact_sampling.py)."""
    return tiny_target(vocab=VOCAB, seed=9)


@pytest.fixture(scope="module")
def sampling_head(sampling_model):
    """A random EAGLE head for ``sampling_model``."""
    return random_head(sampling_model, seed=3)


@pytest.fixture(scope="module")
def default_pipe():
    """The default model (fetched on first use), fp32 on 2 threads."""
    from adaeagle_ext.api import load

    return load(None, dtype="float32", threads=2, progress=False)


# Hypothesis budgets: "short" in `make test` / `make sanitize`, HYPOTHESIS_PROFILE=long for a
# deeper local fuzz run. No deadline: the machine is shared, so timings are noisy.
try:
    import os

    from hypothesis import HealthCheck, settings

    settings.register_profile("short", max_examples=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=2000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "short"))
except ImportError:  # hypothesis is a dev extra; the fuzz tests skip without it
    pass
