"""EAGLE head training: features, draft vocabulary, loss goes down, resume, data filtering."""

import json

import pytest
import torch
from eagle_fixtures import one_thread, tiny_target  # noqa: F401

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.train.conversations import evaluation_prompts, training_mix
from adaeagle_ext.train.features import (
    TokenisedChat,
    load_shards,
    target_features,
    write_shards,
)
from adaeagle_ext.train.train_head import (
    TrainConfig,
    choose_draft_vocab,
    evaluate,
    split,
    train,
    vocab_coverage,
)


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, seed=4)


@pytest.fixture(scope="module")
def sequences(target, tmp_path_factory):
    """Greedy target continuations of random prompts (a self-distilled toy data set)."""
    from adaeagle_ext.spec.generate import generate_ids

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 64, (int(torch.randint(3, 12, (), generator=g)),),
                             generator=g).tolist() for _ in range(16)]
    outs, _ = generate_ids(target, prompts, max_new_tokens=20)
    chats = [TokenisedChat(p, o.token_ids) for p, o in zip(prompts, outs, strict=True)]
    paths = write_shards(target, chats, tmp_path_factory.mktemp("feat"), shard_size=6,
                         batch_size=4, progress=False)
    assert len(paths) == 3
    return load_shards(paths)


def test_features_are_the_targets_hidden_states(target, sequences):
    s = sequences[0]
    (feats, amax), = target_features(target, [s.tokens.tolist()])
    torch.testing.assert_close(s.features.float(), feats.to(torch.bfloat16).float())
    resp = s.loss_mask
    assert resp.sum() == 20 and not resp[-1]  # 20 generated tokens, last position masked
    assert (s.argmax[resp] == amax[resp]).all() and (s.argmax[~resp] == -1).all()
    # greedy data: the target's argmax at a response position is the next token
    assert (s.argmax[resp] == s.tokens[1:][resp[:-1]]).all()


def test_draft_vocabulary_by_frequency(sequences):
    vocab = choose_draft_vocab(sequences, 8, 64, always=[63])
    assert vocab.numel() == 8 and 63 in vocab.tolist()
    full = choose_draft_vocab(sequences, 64, 64)
    assert full.tolist() == list(range(64))
    assert vocab_coverage(sequences, full) == 1.0
    assert 0 < vocab_coverage(sequences, vocab) < 1


def small_config(**kw):
    base = dict(epochs=8, lr=3e-3, warmup_steps=3, batch_tokens=120, noise=0.0,
                checkpoint_every=5, heldout_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss(target, sequences, tmp_path):
    train_seqs, held = split(sequences, 0.2, 0)
    head = EagleHead.for_target(target, seed=0)
    cfg = small_config()
    before_train = evaluate(head, train_seqs, cfg, torch.float32)
    before_held = evaluate(head, held, cfg, torch.float32)
    summary = train(head, train_seqs, held, cfg, tmp_path / "ck.safetensors", progress=False,
                    log=lambda *_: None)
    assert summary["steps"] == summary["total_steps"] > 20
    assert evaluate(head, train_seqs, cfg, torch.float32)["loss"] < 0.85 * before_train["loss"]
    assert summary["heldout"]["loss"] < 0.95 * before_held["loss"]


def test_unrolled_training_lowers_the_later_steps_loss(target, sequences, tmp_path):
    """With ``unroll=2`` the loss counts the second drafting step too, and training on it
    lowers the held-out loss of both steps; evaluate reports top-1 per step."""
    train_seqs, held = split(sequences, 0.2, 0)
    head = EagleHead.for_target(target, seed=0)
    cfg = small_config(unroll=2)
    one_step = evaluate(head, held, small_config(), torch.float32)
    before = evaluate(head, held, cfg, torch.float32)
    assert before["loss"] > one_step["loss"]  # the second step's loss is added
    assert len(before["top1_steps"]) == 2 and "top1_steps" not in one_step
    train(head, train_seqs, held, cfg, tmp_path / "ck.safetensors", progress=False,
          log=lambda *_: None)
    after = evaluate(head, held, cfg, torch.float32)
    assert after["loss"] < 0.95 * before["loss"]
    assert after["top1_steps"][1] > before["top1_steps"][1]


def test_resumed_run_continues_from_its_checkpoint(target, sequences, tmp_path):
    train_seqs, held = split(sequences, 0.2, 0)
    cfg = small_config(epochs=2)
    straight = EagleHead.for_target(target, seed=0)
    train(straight, train_seqs, held, cfg, tmp_path / "a.safetensors", progress=False)

    ck = tmp_path / "b.safetensors"
    first = EagleHead.for_target(target, seed=0)
    s1 = train(first, train_seqs, held, small_config(epochs=2, time_limit_s=0.0), ck,
               progress=False)
    assert s1["steps"] == 1  # "interrupted" after one step
    logs = []
    resumed = EagleHead.for_target(target, seed=1)  # different init: the checkpoint wins
    s2 = train(resumed, train_seqs, held, cfg, ck, progress=False, log=logs.append)
    assert "resumed" in logs[0] and s2["steps"] == s2["total_steps"]
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_training_mix_drops_evaluation_prompts(tmp_path):
    root = tmp_path / "data" / "train"
    root.mkdir(parents=True)
    (root / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Prove the Pythagorean Theorem.", "input": "", "output": "x"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "An eval question", "input": "", "output": "no"},
        {"instruction": "Say hi.", "input": "", "output": "dup"},
    ]))
    (root / "b.jsonl").write_text(json.dumps({"question": "2+2?", "answer": "4"}))
    bench = tmp_path / "data" / "spec_bench"
    bench.mkdir()
    (bench / "question.jsonl").write_text(json.dumps({"turns": ["An eval question"]}))
    exclude = evaluation_prompts(root)
    mix = training_mix([root / "a.jsonl", root / "b.jsonl"], 10, exclude=exclude)
    assert sorted(c.prompt for c in mix) == ["2+2?", "Say hi."]
