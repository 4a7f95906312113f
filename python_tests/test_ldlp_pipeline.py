"""``train-ldlp`` plumbing: knob grid, resumable distillation, the self-distillation check."""

import argparse

import pytest
import torch
from eagle_fixtures import one_thread, tiny_target  # noqa: F401

from adaeagle_ext.cli import build_parser
from adaeagle_ext.train import features, ldlp_pipeline
from adaeagle_ext.train.features import TokenisedChat, load_chats, write_shards


def parse(*argv) -> argparse.Namespace:
    return build_parser().parse_args(["train-ldlp", *argv])


def test_knob_grid():
    assert ldlp_pipeline.knob_grid(parse()) == [(128, 3.0, 8)]
    grid = ldlp_pipeline.knob_grid(parse("--sweep"))
    assert len(grid) == 24 and (64, 1.0, 6) in grid and (256, 4.0, 8) in grid
    assert ldlp_pipeline.knob_grid(parse("--sweep", "--k-max", "5", "--width", "32")) == [
        (32, lam, 5) for lam in (1.0, 2.0, 3.0, 4.0)]
    with pytest.raises(SystemExit):
        ldlp_pipeline.knob_grid(parse("--lam", "0"))


def test_distillation_resumes_and_rejects_other_prompts(tmp_path, monkeypatch):
    model = tiny_target(vocab=16, seed=2)
    chats = [TokenisedChat([1 + i, 2, 3], []) for i in range(5)]
    partial = tmp_path / "chats.partial.json"
    calls = []
    real = features.distill

    def counting(model, part, *a, **kw):
        calls.append(len(part))
        return real(model, part, *a, progress=False, **kw)

    monkeypatch.setattr(features, "distill", counting)
    first = features.distill_resumable(model, chats[:3], [15], 6, partial, block=2)
    assert calls == [2, 1] and len(load_chats(partial)) == 3
    again = features.distill_resumable(model, chats, [15], 6, partial, block=2)
    assert calls == [2, 1, 2]  # only the two new conversations
    assert [c.response for c in again[:3]] == [c.response for c in first]
    assert all(len(c.response) >= 1 for c in again)
    with pytest.raises(SystemExit, match="other prompts"):
        features.distill_resumable(model, chats[::-1], [15], 6, partial, block=2)


def test_greedy_agreement_tells_distilled_from_reference(tmp_path):
    model = tiny_target(vocab=16, seed=3)
    chats = [TokenisedChat([1, 2, 3, 4], []), TokenisedChat([5, 6], [])]
    distilled = features.distill(model, chats, [15], 10, progress=False)
    shards = write_shards(model, distilled, tmp_path / "a", progress=False)
    assert ldlp_pipeline.greedy_agreement(shards) == 1.0
    g = torch.Generator().manual_seed(0)
    noise = [TokenisedChat(c.prompt, torch.randint(0, 15, (10,), generator=g).tolist())
             for c in chats]
    shards = write_shards(model, noise, tmp_path / "b", progress=False)
    assert ldlp_pipeline.greedy_agreement(shards) < 0.5
