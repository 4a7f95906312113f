"""Tiny targets with random EAGLE heads for the speculative-decoding tests."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import ours, random_weights, tiny_config

from adaeagle_ext.drafters.eagle_head import EagleHead

# A small vocabulary makes random drafts agree with the target often enough that accepted
# drafts (and EOS / limits inside them) are exercised.
SMALL_VOCAB = 8


def tiny_target(vocab: int = SMALL_VOCAB, seed: int = 0, max_pos: int = 512, **changes):
    config = tiny_config(vocab_size=vocab, max_position_embeddings=max_pos, **changes)
    return ours(config, random_weights(config, seed=seed))


def random_head(target, seed: int = 0, draft_vocab: torch.Tensor | None = None) -> EagleHead:
    """An untrained head with O(1) outputs (scaled init) bound to ``target``."""
    head = EagleHead.for_target(target, draft_vocab, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p.shape[-1] ** 0.5))
    head.requires_grad_(False)
    return head.eval()


def random_static_tree(gen: torch.Generator, size: int, max_rank: int = 4):
    """``size`` rank paths forming a tree (each path's parent path is present)."""
    paths: list[tuple[int, ...]] = []
    while len(paths) < size:
        parent = () if not paths or torch.rand((), generator=gen) < 0.3 else \
            paths[int(torch.randint(len(paths), (), generator=gen))]
        used = {p[-1] for p in paths if p[:-1] == parent}
        free = [r for r in range(max_rank) if r not in used]
        if free:
            paths.append(parent + (free[int(torch.randint(len(free), (), generator=gen))],))
    return paths


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
