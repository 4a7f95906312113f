"""Training the EAGLE head on cached target features.

Loss (EAGLE-1): ``1.0 * SmoothL1(f̂_{i+1}, f_{i+1}) + 0.1 * CE(p_{i+2}, p̂_{i+2})`` on response
positions, where p is the (draft-vocabulary) softmax of the frozen LM head on the true next
feature and p̂ the same on the predicted one. Uniform noise on the input features. AdamW,
linear warm-up then linear decay, gradient clipping by value. Checkpoints are safetensors
(weights, AdamW moments, a JSON state) and a run resumes from its last one.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.train.features import FeatureSequence


@dataclass
class TrainConfig:
    epochs: float = 2.0
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    clip_value: float = 0.5
    noise: float = 0.1  # U(-noise, noise) on input features (x feature RMS)
    batch_tokens: int = 4096  # padded tokens per batch
    w_reg: float = 1.0
    w_cls: float = 0.1
    unroll: int = 1  # drafting steps trained per position (1: EAGLE-1; 2+: training-time test)
    unroll_weight: float = 1.0  # loss weight of the unrolled steps after the first
    heldout_fraction: float = 0.05
    seed: int = 0
    checkpoint_every: int = 100  # steps
    time_limit_s: float | None = None  # stop (and checkpoint) after this much training time


def choose_draft_vocab(seqs: list[FeatureSequence], size: int, vocab_size: int,
                       always: list[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent tokens of the response positions (their tokens and the
    target's argmax there), plus ``always``; sorted int64 ids below ``vocab_size``."""
    counts: dict[int, int] = {}
    for s in seqs:
        resp = s.tokens[1:][s.loss_mask[:-1]]
        ids = torch.cat([resp, s.argmax[s.argmax >= 0]])
        u, c = torch.unique(ids, return_counts=True)
        for t, n in zip(u.tolist(), c.tolist(), strict=True):
            counts[t] = counts.get(t, 0) + n
    ranked = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    chosen = set(always)
    for t in ranked:
        if len(chosen) >= size:
            break
        chosen.add(t)
    # Fewer distinct tokens than ``size``: fill with the lowest ids (early BPE merges, which
    # tend to be the frequent ones).
    fill = 0
    while len(chosen) < min(size, vocab_size):
        chosen.add(fill)
        fill += 1
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def vocab_coverage(seqs: list[FeatureSequence], vocab: torch.Tensor) -> float:
    """Fraction of the target's greedy tokens (response positions) inside ``vocab``."""
    hit = total = 0
    for s in seqs:
        a = s.argmax[s.argmax >= 0]
        total += a.numel()
        hit += int(torch.isin(a, vocab).sum())
    return hit / max(total, 1)


def split(seqs: list[FeatureSequence], fraction: float, seed: int):
    order = list(range(len(seqs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(round(len(seqs) * fraction))) if len(seqs) > 1 else 0
    held = [seqs[i] for i in sorted(order[:n_held])]
    train = [seqs[i] for i in sorted(order[n_held:])]
    return train, held


def batches(seqs: list[FeatureSequence], batch_tokens: int, rng: random.Random | None):
    """Lists of sequence indices, similar lengths together, ~batch_tokens padded tokens each;
    shuffled when ``rng`` is given."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].tokens))
    out, cur, longest = [], [], 0
    for i in order:
        n = len(seqs[i].tokens)
        if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    if rng is not None:
        rng.shuffle(out)
    return out


def collate(seqs: list[FeatureSequence], idx: list[int], dtype: torch.dtype):
    """Padded pairs: tokens [B, L-1] (t_{i+1}), inputs [B, L-1, H] (f_i), targets [B, L-1, H]
    (f_{i+1}), mask [B, L-1] (pair i counts), argmax [B, L-1] (target's greedy t_{i+2})."""
    length = max(len(seqs[i].tokens) for i in idx) - 1
    h = seqs[idx[0]].features.shape[-1]
    b = len(idx)
    tokens = torch.zeros(b, length, dtype=torch.int64)
    inputs = torch.zeros(b, length, h, dtype=dtype)
    targets = torch.zeros(b, length, h, dtype=dtype)
    mask = torch.zeros(b, length, dtype=torch.bool)
    amax = torch.full((b, length), -1, dtype=torch.int64)
    for r, i in enumerate(idx):
        s = seqs[i]
        n = len(s.tokens) - 1
        tokens[r, :n] = s.tokens[1:]
        inputs[r, :n] = s.features[:-1].to(dtype)
        targets[r, :n] = s.features[1:].to(dtype)
        mask[r, :n] = s.loss_mask[1:]
        amax[r, :n] = s.argmax[1:]
    return tokens, inputs, targets, mask, amax


def shifted(t: torch.Tensor, d: int, fill) -> torch.Tensor:
    """``t`` [B, L, ...] moved d pairs left along L (row i holds row i + d), ``fill`` after."""
    if d == 0:
        return t
    out = torch.full_like(t, fill)
    out[:, :t.shape[1] - d] = t[:, d:]
    return out


@dataclass
class Losses:
    """One batch's losses. total: the training objective (every unrolled step, later ones
    weighted by ``cfg.unroll_weight``); reg / cls: step 0's regression and classification
    losses per counted position; count: step 0's counted positions; steps: per unrolled step
    (logq [count_d, draft V], mask_d [B, L]), logq the head's log-probabilities at the
    positions mask_d counts."""

    total: torch.Tensor
    reg: torch.Tensor
    cls: torch.Tensor
    count: torch.Tensor
    steps: list[tuple[torch.Tensor, torch.Tensor]]


def losses(head: EagleHead, tokens, inputs, targets, mask, cfg: TrainConfig,
           noise_scale=0.0) -> Losses:
    """The loss of one collated batch (see ``Losses``), ``cfg.unroll`` drafting steps deep."""
    if noise_scale > 0:
        inputs = inputs + (torch.rand_like(inputs) * 2 - 1) * noise_scale
    preds = head.forward_train_unrolled(tokens, inputs, cfg.unroll)
    w = head.head_weight.float()
    total, steps, first = 0.0, [], None
    for d, pred in enumerate(preds):
        m_d = shifted(mask, d, False)
        t_d = shifted(targets, d, 0.0)
        m = m_d.float()
        count = m.sum().clamp(min=1)
        reg = (F.smooth_l1_loss(pred.float(), t_d.float(), reduction="none").mean(-1) * m).sum()
        with torch.no_grad():
            p = torch.softmax(t_d[m_d].float() @ w.T, dim=-1)
        logq = torch.log_softmax(pred[m_d].float() @ w.T, dim=-1)
        cls = -(p * logq).sum(-1).sum()
        weight = 1.0 if d == 0 else cfg.unroll_weight
        total = total + weight * (cfg.w_reg * reg + cfg.w_cls * cls) / count
        steps.append((logq, m_d))
        if d == 0:
            first = (reg / count, cls / count, count)
    return Losses(total, *first, steps)


@torch.no_grad()
def evaluate(head: EagleHead, seqs, cfg: TrainConfig, dtype) -> dict:
    """Held-out mean loss and top-1 (head argmax == target greedy token), response positions;
    with ``cfg.unroll`` > 1 also ``top1_steps``: top-1 at each unrolled step (step d drafts
    token d+1 of a chain from the head's own features, teacher-forced tokens)."""
    if not seqs:
        return {"loss": float("nan"), "top1": float("nan"), "positions": 0}
    tot = n = 0.0
    hits = [0.0] * cfg.unroll
    counts = [0.0] * cfg.unroll
    for idx in batches(seqs, cfg.batch_tokens, None):
        tokens, inputs, targets, mask, amax = collate(seqs, idx, dtype)
        got = losses(head, tokens, inputs, targets, mask, cfg)
        tot += float(got.total) * float(got.count)
        n += float(got.count)
        for d, (logq, m_d) in enumerate(got.steps):
            best = head.to_target_ids(logq.argmax(-1))
            hits[d] += float((best == shifted(amax, d, -1)[m_d]).sum())
            counts[d] += float(m_d.sum())
    out = {"loss": tot / max(n, 1), "top1": hits[0] / max(counts[0], 1), "positions": int(n)}
    if cfg.unroll > 1:
        out["top1_steps"] = [h / max(c, 1) for h, c in zip(hits, counts, strict=True)]
    return out


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def save_checkpoint(path: Path, head: EagleHead, opt: torch.optim.AdamW, state: dict) -> None:
    tensors = {f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}
    names = dict(head.named_parameters())
    for name, p in names.items():
        st = opt.state.get(p)
        if st:
            tensors[f"adam.exp_avg.{name}"] = st["exp_avg"].contiguous()
            tensors[f"adam.exp_avg_sq.{name}"] = st["exp_avg_sq"].contiguous()
            state.setdefault("adam_step", {})[name] = float(st["step"])
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    tmp.rename(path)


def load_checkpoint(path: Path, head: EagleHead, opt: torch.optim.AdamW) -> dict:
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    for name, p in head.named_parameters():
        if f"adam.exp_avg.{name}" in tensors:
            opt.state[p] = {"step": torch.tensor(state["adam_step"][name]),
                            "exp_avg": tensors[f"adam.exp_avg.{name}"],
                            "exp_avg_sq": tensors[f"adam.exp_avg_sq.{name}"]}
    return state


def train(head: EagleHead, train_seqs, held_seqs, cfg: TrainConfig, checkpoint: Path,
          progress: bool = True, log=print) -> dict:
    """Train ``head`` (bound to its fp32 target) in place; resume from ``checkpoint`` when it
    exists. Returns a summary (steps, time, last losses, held-out metrics)."""
    dtype = torch.float32
    head.train()
    head.requires_grad_(True)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    feat_rms = float(torch.cat([s.features[:64].float() for s in train_seqs[:64]])
                     .pow(2).mean().sqrt())
    noise_scale = cfg.noise * feat_rms
    per_epoch = len(batches(train_seqs, cfg.batch_tokens, None))
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    step, elapsed, epoch = 0, 0.0, 0
    history: list[dict] = []
    if checkpoint.is_file():
        st = load_checkpoint(checkpoint, head, opt)
        step, elapsed, epoch, history = st["step"], st["elapsed"], st["epoch"], st["history"]
        log(f"resumed from {checkpoint} at step {step}/{total}")
    bar = tqdm(total=total, initial=step, desc="train-head", unit="step", disable=not progress)
    stop = False
    seen_tokens = 0
    t_start = time.perf_counter() - elapsed
    while step < total and not stop:
        order = batches(train_seqs, cfg.batch_tokens, random.Random(cfg.seed * 1000 + epoch))
        skip = step - epoch * per_epoch  # batches of this epoch done before a resume
        for idx in order[max(0, skip):]:
            if step >= total:
                break
            tokens, inputs, targets, mask, _ = collate(train_seqs, idx, dtype)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            got = losses(head, tokens, inputs, targets, mask, cfg, noise_scale)
            opt.zero_grad(set_to_none=True)
            got.total.backward()
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
            opt.step()
            step += 1
            seen_tokens += int(got.count)
            elapsed = time.perf_counter() - t_start
            history.append({"step": step, "loss": float(got.total.detach()),
                            "reg": float(got.reg.detach()), "cls": float(got.cls.detach())})
            bar.update(1)
            last = history[-1]
            bar.set_postfix(loss=f"{last['loss']:.3f}", reg=f"{last['reg']:.3f}",
                            cls=f"{last['cls']:.2f}",
                            tok_s=f"{seen_tokens / max(elapsed, 1e-9):.0f}")
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint(checkpoint, head, opt, {"step": step, "elapsed": elapsed,
                                                        "epoch": epoch, "history": history,
                                                        "config": asdict(cfg)})
            if cfg.time_limit_s is not None and elapsed >= cfg.time_limit_s:
                stop = True
                break
        else:
            epoch += 1
    bar.close()
    save_checkpoint(checkpoint, head, opt, {"step": step, "elapsed": elapsed, "epoch": epoch,
                                            "history": history, "config": asdict(cfg)})
    head.eval()
    head.requires_grad_(False)
    held = evaluate(head, held_seqs, cfg, dtype)
    last = history[-20:]
    return {"steps": step, "total_steps": total, "train_s": elapsed,
            "final_loss": sum(h["loss"] for h in last) / max(len(last), 1),
            "first_loss": history[0]["loss"] if history else float("nan"),
            "heldout": held, "feature_rms": feat_rms}
