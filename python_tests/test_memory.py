"""Long runs do not leak: many consecutive generations in one process keep resident memory flat,
and the KV cache and the EAGLE draft cache are allocated once per call, from S_max.

RSS is read from /proc/self/statm after a warm-up (allocator pools, lazily built kernels and
workspaces, Python caches reach their steady state there). The bound is a small fraction of
what the run would leak if each generation kept its caches alive (see ``per_call_bytes``), so a
leak of one cache per call fails the test while allocator jitter does not.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm")
PAGE = os.sysconf("SC_PAGE_SIZE")
CACHE_ROWS = 2048  # explicit S_max: makes one leaked cache big enough to see


def rss_bytes() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def per_call_bytes(model, head) -> int:
    """Bytes of the target and draft caches one generate call allocates."""
    target = model.new_cache(1, CACHE_ROWS).buf
    draft = head.new_cache(1, CACHE_ROWS).buf
    return target.numel() * target.element_size() + draft.numel() * draft.element_size()


def run_many(model, methods, calls: int, new_tokens: int, warmup: int) -> tuple[int, int]:
    """(RSS growth after warm-up, generated tokens) over ``calls`` generations."""
    prompts = [[3, 1, 4, 1, 5], [2, 7], [6, 0, 2, 6]]
    made, base = 0, None
    for i in range(calls):
        if i == warmup:
            base = rss_bytes()
        method = methods[i % len(methods)]
        out, _ = generate_ids(model, [prompts[i % 3]], method=method, max_new_tokens=new_tokens,
                              max_seq_len=CACHE_ROWS)
        made += len(out[0].token_ids)
    return rss_bytes() - base, made


# After warm-up the steady state moves by allocator jitter only (glibc arenas, torch's CPU
# allocator): 8 MiB. One leaked target + draft cache per call is ~3 MiB here
# (``per_call_bytes``), so leaking them would exceed the bound ten times over.
BOUND = 8 << 20


@pytest.fixture(scope="module")
def model_and_head():
    model = tiny_target(seed=21, max_pos=CACHE_ROWS, hidden_size=128, num_heads=2,
                        num_kv_heads=1)  # head_dim 64: the C++ attention kernel runs
    return model, random_head(model, seed=21)


def test_rss_flat_over_many_generations(model_and_head):
    model, head = model_and_head
    methods = ["ar", EagleChain("4", head=head), "ar",
               Eagle2("top_k=3,depth=4,total_tokens=10", head=head)]
    calls, warmup = 40, 8
    growth, made = run_many(model, methods, calls, new_tokens=32, warmup=warmup)
    assert made == calls * 32
    assert per_call_bytes(model, head) * (calls - warmup) > 10 * BOUND  # the test has teeth
    assert growth < BOUND, f"RSS grew {growth / 2**20:.1f} MiB (bound {BOUND / 2**20:.0f} MiB)"


@pytest.mark.slow
def test_rss_flat_over_200_generations_of_256_tokens(model_and_head):
    model, head = model_and_head
    methods = ["ar", EagleChain("4", head=head), Eagle2("top_k=3,depth=4,total_tokens=10",
                                                        head=head)]
    calls, warmup = 200, 20
    growth, made = run_many(model, methods, calls, new_tokens=256, warmup=warmup)
    assert made == calls * 256
    assert growth < BOUND, f"RSS grew {growth / 2**20:.1f} MiB (bound {BOUND / 2**20:.0f} MiB)"


@pytest.mark.slow
@pytest.mark.model
def test_default_model_rss_flat_over_200_generations():
    """The default model (packed Q4_1 weights): 200 generations of 256 tokens; the bound is
    16 MiB, under a fifth of one leaked 256-token fp32 KV cache per call (30 layers x 2 x
    3 kv heads x 64 x 4 bytes = 92 KiB a row, ~30 MiB a call)."""
    import adaeagle_ext

    pipe = adaeagle_ext.load(progress=False)
    torch.set_num_threads(2)
    prompts = ["Name three rivers.", "def add(a, b):", "The sky is"]
    base = None
    for i in range(200):
        if i == 10:
            base = rss_bytes()
        res = pipe.generate(prompts[i % 3], max_new_tokens=256, eos=False)
        assert len(res.token_ids) == 256
    growth = rss_bytes() - base
    assert growth < 16 << 20, f"RSS grew {growth / 2**20:.1f} MiB"


def test_caches_are_sized_once_from_s_max(model_and_head, monkeypatch):
    """One target cache and one draft cache per call, each of S_max (+ one tree) rows, never
    regrown, whatever the prompt and draft lengths."""
    model, head = model_and_head
    sizes = []
    real_target, real_draft = model.new_cache, head.new_cache
    monkeypatch.setattr(model, "new_cache",
                        lambda b, s: sizes.append(("target", s)) or real_target(b, s))
    monkeypatch.setattr(head, "new_cache",
                        lambda b, s: sizes.append(("draft", s)) or real_draft(b, s))
    for method in (EagleChain("4", head=head), Eagle2(head=head)):
        sizes.clear()
        out, _ = generate_ids(model, [[1] * 100, [2, 3]], method=method, max_new_tokens=60)
        s_max = 100 + 60 + method.max_tree_nodes
        assert sorted(sizes) == [("draft", s_max + 65), ("target", s_max)], sizes
