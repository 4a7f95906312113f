"""Tiny targets with random EAGLE heads for the speculative-decoding tests."""

from __future__ import annotations

import torch
from model_fixtures import ours, random_weights, tiny_config
from thread_fixtures import one_thread  # noqa: F401  (autouse fixture, re-exported)

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.spec.generate import generate_ids

# A small vocabulary makes random drafts agree with the target often enough that accepted
# drafts (and EOS / limits inside them) are exercised.
SMALL_VOCAB = 8

# Prompts over SMALL_VOCAB for the greedy identity tests: short, long, one token, repeats.
PROMPTS = [[5, 1, 3, 7, 4], [i % 8 for i in range(1, 71)], [2], [6, 6, 1, 0, 3, 2, 5]]


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


_AR: dict = {}


def ar_outputs(model, prompts: list[list[int]], **kw):
    """``ar``'s outputs for ``prompts`` (``generate_ids`` keywords ``kw``), cached per model and
    arguments; the cache holds the model so that its id is not reused."""
    key = (id(model), repr(prompts), repr(sorted(kw.items())))
    if key not in _AR:
        _AR[key] = (model, generate_ids(model, prompts, **kw)[0])
    return _AR[key][1]


def check_same(model, strategy, prompts: list[list[int]], **kw):
    """Runs ``strategy`` on ``prompts`` and asserts every request's tokens and finish reason
    equal ``ar``'s; returns the run's stats."""
    want = ar_outputs(model, prompts, **kw)
    got, stats = generate_ids(model, prompts, method=strategy, **kw)
    for w, g in zip(want, got, strict=True):
        assert g.token_ids == w.token_ids, getattr(strategy, "name", strategy)
        assert g.finish_reason == w.finish_reason
    return stats


def letters(ids: list[int]) -> str:
    """Text of SMALL_VOCAB token ids, one letter each (a decoder for stop-string tests)."""
    return "".join("abcdefgh"[i] for i in ids)


def check_stop_strings(model, strategies) -> None:
    """Stop strings taken from ``ar``'s own texts (so they fall inside accepted drafts): every
    strategy's texts and finish reasons equal ``ar``'s under them."""
    ref = ar_outputs(model, PROMPTS, max_new_tokens=20, decode=letters)
    stop = [ref[0].text[5:7], ref[2].text[3:5]]
    want = ar_outputs(model, PROMPTS, max_new_tokens=20, decode=letters, stop=stop)
    for strategy in strategies:
        got, _ = generate_ids(model, PROMPTS, method=strategy, max_new_tokens=20,
                              decode=letters, stop=stop)
        assert [g.text for g in got] == [w.text for w in want], getattr(strategy, "name", "")
        assert [g.finish_reason for g in got] == [w.finish_reason for w in want]


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
