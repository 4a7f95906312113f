"""Training the LDLP on collected labels: asymmetric L1, AdamW, cosine schedule, validation
metrics by conversation split, and a sweep over width W, penalty lambda and k_max.

The validation metrics say what a draft length rule would do at inference. With ``pred`` the
clamped rounded prediction and ``label`` the accepted length of a k_max chain (clamped to
k_max), a step that drafts ``pred`` tokens accepts ``min(pred, label)`` of them and wastes
``max(pred - label, 0)``. Throughput relative to ``ar`` is then about
``(1 + mean accepted) / (1 + r * mean pred)`` where r is the cost of one draft token relative to
one target step (``speed_proxy``); the same number for every fixed length and for the oracle
(pred = label) puts the predictor between the baselines and its upper bound.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from adaeagle_ext.drafters.ldlp import LDLP
from adaeagle_ext.train.ldlp_labels import LabelSet


def asymmetric_l1(pred: torch.Tensor, label: torch.Tensor, lam: float) -> torch.Tensor:
    """Mean of ``lam * (label - pred)`` where pred < label, else ``pred - label``.

    pred: float [N] raw predictions; label: [N] target lengths; lam >= 1 (under-prediction
    weight). Returns a scalar tensor.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    diff = pred - label.to(pred.dtype)
    return torch.where(diff < 0, -lam * diff, diff).mean()


@dataclass
class LdlpTrainConfig:
    width: int = 128
    lam: float = 3.0
    k_max: int = 8
    epochs: float = 4.0
    lr: float = 2e-3
    batch: int = 256
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    time_limit_s: float | None = None


@dataclass
class Examples:
    """Training rows: embedding rows fetched per batch from ``embedding`` [V, H] by ``token``
    [N]; ``hidden`` [N, H] (bf16); ``target`` float32 [N] = min(label, k_max)."""

    embedding: torch.Tensor
    token: torch.Tensor
    hidden: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.numel())

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.embedding[self.token[idx]].float(), self.hidden[idx].float(),
                self.target[idx])


def split_conversations(conv: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """bool [N]: True for rows of the held-out conversations (``fraction`` of them, at least
    one when there are two or more)."""
    ids = sorted(set(conv.tolist()))
    random.Random(seed).shuffle(ids)
    n = max(1, round(len(ids) * fraction)) if len(ids) > 1 else 0
    return torch.isin(conv, torch.tensor(ids[:n], dtype=conv.dtype))


def examples(labels: LabelSet, embedding: torch.Tensor, k_max: int,
             rows: torch.Tensor) -> Examples:
    """The usable rows (label exact at ``k_max``) among bool ``rows`` [N]."""
    if k_max > labels.k:
        raise ValueError(f"k_max {k_max} exceeds the labels' collection length {labels.k}")
    keep = rows & labels.usable(k_max)
    return Examples(embedding, labels.token[keep], labels.hidden[keep],
                    labels.label[keep].clamp(max=k_max).float())


def speed_proxy(accepted: float, drafted: float, cost_ratio: float) -> float:
    """(1 + accepted drafts) / (1 + cost_ratio * drafted tokens), per step on average."""
    return (1.0 + accepted) / (1.0 + cost_ratio * drafted)


def length_metrics(pred: torch.Tensor, label: torch.Tensor, cost_ratio: float) -> dict:
    """Metrics of integer draft lengths ``pred`` [N] against accepted lengths ``label`` [N]."""
    pred, label = pred.float(), label.float()
    acc = torch.minimum(pred, label)
    return {"mae": float((pred - label).abs().mean()),
            "signed": float((pred - label).mean()),
            "exact": float((pred == label).float().mean()),
            "mean_pred": float(pred.mean()),
            "accepted": float(acc.mean()),
            "overdraft": float((pred - label).clamp(min=0).mean()),
            "underdraft": float((label - pred).clamp(min=0).mean()),
            "speed_proxy": speed_proxy(float(acc.mean()), float(pred.mean()), cost_ratio)}


@torch.no_grad()
def predict_raw(module: LDLP, data: Examples, batch: int = 4096) -> torch.Tensor:
    """float32 [N] raw outputs of ``module`` on every row."""
    out = []
    for s in range(0, len(data), batch):
        emb, hid, _ = data.batch(torch.arange(s, min(s + batch, len(data))))
        out.append(module(emb, hid).float())
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(module: LDLP, data: Examples, k_max: int, lam: float,
             cost_ratio: float) -> dict:
    """Validation record: loss, the metrics of the predicted lengths, the same metrics for
    every fixed length 0..k_max and for the oracle, and the best fixed length."""
    raw = predict_raw(module, data)
    pred = raw.round().clamp(0, k_max)
    label = data.target
    rec = {"loss": float(asymmetric_l1(raw, label, lam)), "positions": len(data),
           **length_metrics(pred, label, cost_ratio)}
    fixed = {k: length_metrics(torch.full_like(label, k), label, cost_ratio)["speed_proxy"]
             for k in range(k_max + 1)}
    best = max(fixed, key=fixed.get)
    rec.update(fixed_speed_proxy=fixed, best_fixed=best, best_fixed_proxy=fixed[best],
               oracle_proxy=length_metrics(label, label, cost_ratio)["speed_proxy"],
               gain_over_best_fixed=rec["speed_proxy"] / fixed[best] - 1.0,
               pred_histogram=torch.bincount(pred.long(), minlength=k_max + 1).tolist())
    return rec


def train_ldlp(train: Examples, val: Examples | None, cfg: LdlpTrainConfig,
               cost_ratio: float = 0.2, progress: bool = False) -> tuple[LDLP, dict]:
    """Train a fresh LDLP (float32) on ``train``; evaluate on ``val`` when given.

    Returns:
        (module in eval mode, record: config, steps, train_s, losses (first / last-50 mean),
        final validation metrics).
    """
    from tqdm import tqdm

    if len(train) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    hidden = train.hidden.shape[1]
    module = LDLP(hidden, cfg.width)
    with torch.no_grad():  # start at the mean label: the loss then shapes only the spread
        module.head.bias.fill_(float(train.target.mean()))
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train) / cfg.batch)
    total = max(1, int(cfg.epochs * per_epoch))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    t0 = time.perf_counter()
    step = 0
    module.train()
    bar = tqdm(total=total, desc=f"LDLP W={cfg.width} lam={cfg.lam} k={cfg.k_max}",
               unit="step", disable=not progress, leave=False)
    stopped_early = False
    while step < total:
        perm = torch.randperm(len(train), generator=gen)
        for s in range(0, len(train), cfg.batch):
            if step >= total:
                break
            if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
                stopped_early = True
                break
            emb, hid, target = train.batch(perm[s:s + cfg.batch])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = asymmetric_l1(module(emb, hid), target, cfg.lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
        if stopped_early:
            break
    bar.close()
    module.eval().requires_grad_(False)
    rec = {"config": asdict(cfg), "steps": step, "planned_steps": total,
           "stopped_by_time_limit": stopped_early, "train_s": time.perf_counter() - t0,
           "train_positions": len(train), "first_loss": losses[0],
           "final_loss": sum(losses[-50:]) / len(losses[-50:])}
    if val is not None and len(val):
        rec["val"] = evaluate(module, val, cfg.k_max, cfg.lam, cost_ratio)
    return module, rec


def sweep_markdown(records: list[dict], cost_ratio: float) -> str:
    """A markdown table of sweep records (one row per configuration)."""
    lines = [f"Validation metrics per configuration (speed proxy at cost ratio r = {cost_ratio}; "
             "gain is over the best fixed length on the same positions).", "",
             "| W | lambda | k_max | steps | train s | val loss | MAE | signed | exact | "
             "mean pred | accepted | overdraft | proxy | best fixed (proxy) | gain | oracle |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c, v = r["config"], r["val"]
        lines.append(
            f"| {c['width']} | {c['lam']:g} | {c['k_max']} | {r['steps']} | "
            f"{r['train_s']:.0f} | {v['loss']:.3f} | {v['mae']:.3f} | {v['signed']:+.3f} | "
            f"{v['exact']:.3f} | {v['mean_pred']:.2f} | {v['accepted']:.3f} | "
            f"{v['overdraft']:.3f} | {v['speed_proxy']:.4f} | "
            f"{v['best_fixed']} ({v['best_fixed_proxy']:.4f}) | "
            f"{100 * v['gain_over_best_fixed']:+.1f}% | {v['oracle_proxy']:.4f} |")
    return "\n".join(lines) + "\n"
