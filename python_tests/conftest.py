"""Shared fixtures: the device list (CUDA cases skip without a GPU), random trees, and the tiny
target and head of the exact-distribution (T > 0) tests."""

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


def random_parents(gen: torch.Generator, size: int, bushiness: float = 0.5) -> list[int]:
    """A random tree of `size` nodes in topological order: each node hangs under a random
    earlier node, biased towards recent ones when bushiness is low (chains)."""
    parents = [-1]
    for i in range(1, size):
        if torch.rand((), generator=gen).item() < bushiness:
            parents.append(int(torch.randint(0, i, (), generator=gen)))
        else:
            parents.append(i - 1)
    return parents


def random_batch(gen: torch.Generator, batch: int, max_size: int = 64, bushiness: float = 0.5):
    """A ragged batch: (parents int32 [N], tree_indptr int32 [B+1], prefix_lens int32 [B])."""
    sizes = torch.randint(1, max_size + 1, (batch,), generator=gen).tolist()
    parents = [p for s in sizes for p in random_parents(gen, s, bushiness)]
    indptr = [0]
    for s in sizes:
        indptr.append(indptr[-1] + s)
    prefix = torch.randint(0, 300, (batch,), generator=gen, dtype=torch.int32)
    return (
        torch.tensor(parents, dtype=torch.int32),
        torch.tensor(indptr, dtype=torch.int32),
        prefix,
    )


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
