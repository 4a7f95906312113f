"""LDLP training: the asymmetric L1, metrics, conversation split, and that training learns."""

import pytest
import torch
from eagle_fixtures import one_thread  # noqa: F401

from adaeagle_ext.train.ldlp_labels import LabelSet
from adaeagle_ext.train.ldlp_train import (
    Examples,
    LdlpTrainConfig,
    asymmetric_l1,
    examples,
    length_metrics,
    split_conversations,
    train_ldlp,
)


def test_asymmetric_l1_literal_values():
    pred = torch.tensor([1.0, 3.0, 2.5, 0.0])
    label = torch.tensor([3, 1, 2, 0])
    # under by 2 (x3), over by 2, over by 0.5, exact
    assert float(asymmetric_l1(pred, label, 3.0)) == pytest.approx((6 + 2 + 0.5 + 0) / 4)
    assert float(asymmetric_l1(pred, label, 1.0)) == pytest.approx((2 + 2 + 0.5) / 4)
    with pytest.raises(ValueError, match="lam"):
        asymmetric_l1(pred, label, 0.0)


def test_length_metrics_literal_values():
    m = length_metrics(torch.tensor([2, 0, 4]), torch.tensor([3, 0, 1]), cost_ratio=0.5)
    assert m["mae"] == pytest.approx(4 / 3)
    assert m["signed"] == pytest.approx(2 / 3)
    assert m["exact"] == pytest.approx(1 / 3)
    assert m["accepted"] == pytest.approx(1.0)  # min: 2, 0, 1
    assert m["overdraft"] == pytest.approx(1.0) and m["underdraft"] == pytest.approx(1 / 3)
    assert m["speed_proxy"] == pytest.approx(2.0 / (1 + 0.5 * 2))


def synthetic(n=6000, hidden=16, vocab=50, seed=0, convs=60):
    """Labels that depend on the hidden state's first coordinate and on the token."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    tok = torch.randint(0, vocab, (n,), generator=g)
    lab = (3 + 2.5 * h[:, 0] + (tok % 3 == 0).float() * 2).round().clamp(0, 8).long()
    emb = torch.randn(vocab, hidden, generator=g)
    conv = torch.randint(0, convs, (n,), generator=g)
    known = torch.full((n,), 8)
    known[:50] = 1  # a few cut short by a truncated response
    return LabelSet(tok, h.to(torch.bfloat16), lab, known, conv, 8), emb


def test_split_by_conversation_is_disjoint():
    labels, _ = synthetic()
    held = split_conversations(labels.conv, 0.2, seed=3)
    assert not set(labels.conv[held].tolist()) & set(labels.conv[~held].tolist())
    assert len(set(labels.conv[held].tolist())) == 12
    assert torch.equal(held, split_conversations(labels.conv, 0.2, seed=3))


def test_examples_drop_censored_rows_and_clamp():
    labels, emb = synthetic()
    ex = examples(labels, emb, 6, torch.ones_like(labels.conv, dtype=torch.bool))
    cut = (labels.known < 6) & (labels.label >= labels.known)
    assert len(ex) == len(labels.label) - int(cut.sum()) and int(ex.target.max()) == 6
    with pytest.raises(ValueError, match="k_max"):
        examples(labels, emb, 9, torch.ones_like(labels.conv, dtype=torch.bool))


def test_training_lowers_the_loss_and_beats_fixed_lengths():
    labels, emb = synthetic()
    held = split_conversations(labels.conv, 0.2, 0)
    tr, va = examples(labels, emb, 8, ~held), examples(labels, emb, 8, held)
    cfg = LdlpTrainConfig(width=32, lam=2.0, k_max=8, epochs=6, lr=3e-3, batch=128,
                          warmup_steps=10)
    module, rec = train_ldlp(tr, va, cfg, cost_ratio=0.2)
    assert rec["final_loss"] < 0.6 * rec["first_loss"]
    v = rec["val"]
    assert v["mae"] < 1.0 and v["gain_over_best_fixed"] > 0.03
    assert v["oracle_proxy"] >= v["speed_proxy"]
    assert sum(v["pred_histogram"]) == len(va)
    # the fused op agrees with the module on the trained weights
    x = va.batch(torch.arange(64))
    want = module(x[0], x[1]).round().clamp(0, 8).to(torch.int32)
    got = module.predict(x[0].contiguous(), x[1].contiguous(), 8)
    assert (got - want).abs().max() <= 1 and (got == want).float().mean() > 0.95


def test_penalty_moves_predictions_up():
    labels, emb = synthetic(seed=1)
    held = split_conversations(labels.conv, 0.2, 0)
    tr, va = examples(labels, emb, 8, ~held), examples(labels, emb, 8, held)
    noisy = Examples(tr.embedding, tr.token, tr.hidden,
                     (tr.target + torch.randint(-2, 3, tr.target.shape).float()).clamp(0, 8))
    means = []
    for lam in (1.0, 4.0):
        cfg = LdlpTrainConfig(width=32, lam=lam, epochs=3, lr=3e-3, warmup_steps=10)
        _, rec = train_ldlp(noisy, va, cfg)
        means.append(rec["val"]["signed"])
    assert means[1] > means[0] + 0.2
