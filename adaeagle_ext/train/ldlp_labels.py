"""LDLP training labels: how many tokens of a greedy EAGLE chain the target would accept.

For a target-produced (greedy, self-distilled) sequence x_0..x_{L-1} with target features f_i
(final-normed hidden state at i, predicting x_{i+1}), response position j is a decoding state
right after a verification: x_j is the last accepted token, x_{j+1} the bonus token. At
inference the head has then run the target pairs (f_i, x_{i+1}) for i <= j and drafts
x_{j+2}, x_{j+3}, ... greedily from its own predicted features (``spec/chain.py`` at
temperature 0, reduced draft vocabulary mapped to target ids). The label of j is the length of
the longest common prefix of that k-token draft with x_{j+2..}; the LDLP sees (embed(x_j), f_j).

All positions of a sequence are drafted at once, level by level: the teacher-forced rows are
run once (causal), and the chain node of position j at level d attends to the teacher-forced
rows <= j plus its own earlier chain nodes. A chain stops as soon as it misses (its label is
then known), so deeper levels only run the few positions still matching.

Label shards (one per feature shard, ``labels/shard_XXXXX.safetensors``): ``token`` int64 [N]
(x_j), ``hidden`` bf16 [N, H] (f_j), ``label`` int8 [N], ``known`` int8 [N] (how many
continuation tokens were known: ``k`` unless a truncated response ended within k tokens, so
``min(label, k')`` is exact for every ``k' <= known`` or whenever ``label < known``),
``conv`` int64 [N] (the conversation's index in the chats list), ``pos`` int32 [N] (j).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.models.llama import rope_cos_sin

FORMAT = "adaeagle-ldlp-labels-v1"


@dataclass
class SequenceLabels:
    """Labels of one sequence's positions j = ``start`` .. L-3 (P of them)."""

    positions: torch.Tensor  # int64 [P], j
    label: torch.Tensor  # int64 [P], accepted chain length (<= k)
    known: torch.Tensor  # int64 [P], continuation tokens known (<= k)


def _attend(q, kt, vt, tf_mask, kc, vc, scale):
    """Attention of A queries over shared teacher-forced keys plus their own chain keys.

    q [A, h, D]; kt, vt [S, h, D] (kv heads already repeated); tf_mask bool [A, S] (True =
    visible); kc, vc [A, C, h, D] (all visible) or None. Returns [A, h*D].
    """
    scores = torch.einsum("ahd,shd->ahs", q, kt) * scale
    scores = scores.masked_fill(~tf_mask[:, None, :], float("-inf"))
    if kc is not None:
        scores = torch.cat([scores, torch.einsum("ahd,achd->ahc", q, kc) * scale], dim=-1)
    p = scores.softmax(-1)
    s = kt.shape[0]
    out = torch.einsum("ahs,shd->ahd", p[..., :s], vt)
    if kc is not None:
        out = out + torch.einsum("ahc,achd->ahd", p[..., s:], vc)
    return out.reshape(out.shape[0], -1)


def _greedy_draft(head: EagleHead, feats: torch.Tensor) -> torch.Tensor:
    """Target ids int64 [A] of the head's argmax over its draft vocabulary."""
    return head.to_target_ids(head.logits(feats).argmax(-1))


@torch.inference_mode()
def sequence_labels(head: EagleHead, tokens: torch.Tensor, features: torch.Tensor, start: int,
                    k: int, complete: bool = True) -> SequenceLabels:
    """Labels of every response position of one sequence.

    Args:
        head: an EagleHead bound to the target.
        tokens: int64 [L], prompt + response; features [L, H], the target's final-normed hidden
            states (row i predicts x_{i+1}).
        start: the first labelled position (the prompt's last token, ``len(prompt) - 1``).
        k: chain length drafted (the collection's k_max).
        complete: the response ends where the target stopped (EOS); if False (truncated),
            positions near the end get ``known`` < k.

    Returns:
        SequenceLabels for j = start .. L-3 (empty when the response is shorter than 2).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    length = int(tokens.numel())
    if features.shape[0] != length:
        raise ValueError(f"features has {features.shape[0]} rows, tokens {length}")
    if not 0 <= start:
        raise ValueError(f"start must be >= 0, got {start}")
    pos = torch.arange(start, max(start, length - 2))
    if pos.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return SequenceLabels(empty, empty, empty)
    avail = length - 2 - pos  # continuation tokens x_{j+2..L-1}
    cap = avail.clamp(max=k)
    known = torch.full_like(pos, k) if complete else cap.clone()

    dtype = head.dtype
    attn = head.self_attn
    # Teacher-forced rows i = 0 .. L-2: pair (f_i, x_{i+1}) at position i.
    x = head.fuse(tokens[1:], features[:-1].to(dtype))
    rows = torch.arange(length - 1)
    cos, sin = rope_cos_sin(rows, head.inv_freq, x.dtype)
    q, kt, vt = attn.project(x, cos, sin)
    # Only rows up to the last labelled position are ever read.
    hi = int(pos[-1]) + 1
    rep = attn.num_heads // attn.num_kv_heads
    kt = kt[:hi].repeat_interleave(rep, dim=1)
    vt = vt[:hi].repeat_interleave(rep, dim=1)
    out = _attend(q[:hi], kt, vt, rows[None, :hi] <= rows[:hi, None], None, None, attn.scale)
    cur = head._finish(x[:hi], out)[pos]  # predicted f_{j+1}: proposes x_{j+2}

    label = torch.zeros_like(pos)
    alive = torch.arange(pos.numel())  # indices into pos of the chains still matching
    chain_k: list[torch.Tensor] = []  # per level >= 2: [P, h, D] (rows of dead chains unused)
    chain_v: list[torch.Tensor] = []
    for level in range(1, k + 1):
        draft = _greedy_draft(head, cur)
        hit = draft == tokens[pos[alive] + level + 1]
        label[alive[hit]] = level
        keep = hit & (cap[alive] > level)
        alive, cur, draft = alive[keep], cur[keep], draft[keep]
        if alive.numel() == 0 or level == k:
            break
        # Chain node of level + 1: (own predicted feature, own draft) at position j + level.
        xn = head.fuse(draft, cur)
        cos, sin = rope_cos_sin(pos[alive] + level, head.inv_freq, xn.dtype)
        qn, kn, vn = attn.project(xn, cos, sin)
        for buf, new in ((chain_k, kn), (chain_v, vn)):
            full = new.new_zeros(pos.numel(), attn.num_heads, attn.head_dim)
            full[alive] = new.repeat_interleave(rep, dim=1)
            buf.append(full)
        kc = torch.stack([c[alive] for c in chain_k], dim=1)
        vc = torch.stack([c[alive] for c in chain_v], dim=1)
        tf_mask = rows[None, :hi] <= pos[alive, None]
        cur = head._finish(xn, _attend(qn, kt, vt, tf_mask, kc, vc, attn.scale))
    return SequenceLabels(pos, label, known)


def head_fingerprint(head: EagleHead) -> str:
    """Identifies a head's weights (labels from another head are stale)."""
    total = sum(float(p.detach().double().abs().sum()) for p in head.parameters())
    return f"{total:.6e}/{head.config.draft_vocab_size}"


def label_shard(head: EagleHead, shard: Path, out: Path, k: int, eos_ids: Sequence[int],
                conv_offset: int, bar: tqdm | None = None) -> int:
    """Label one feature shard (``train/features.py`` layout) into ``out``. Returns the
    number of labelled positions."""
    t = load_file(str(shard))
    off = t["offsets"].tolist()
    eos = set(int(e) for e in eos_ids)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("token", "hidden", "label", "known",
                                                            "conv", "pos")}
    for s, (a, b) in enumerate(zip(off, off[1:], strict=False)):
        tokens = t["tokens"][a:b]
        mask = t["loss_mask"][a:b].bool()
        if not mask.any():
            continue
        start = int(mask.nonzero()[0])
        feats = t["features"][a:b]
        got = sequence_labels(head, tokens, feats.to(head.dtype), start, k,
                              complete=int(tokens[-1]) in eos)
        n = got.positions.numel()
        parts["token"].append(tokens[got.positions])
        parts["hidden"].append(feats[got.positions].to(torch.bfloat16))
        parts["label"].append(got.label.to(torch.int8))
        parts["known"].append(got.known.to(torch.int8))
        parts["conv"].append(torch.full((n,), conv_offset + s, dtype=torch.int64))
        parts["pos"].append(got.positions.to(torch.int32))
        if bar is not None:
            bar.update(n)
    hidden = t["features"].shape[1]
    tensors = {n: (torch.cat(v) if v else torch.zeros((0, hidden) if n == "hidden" else (0,),
                                                      dtype=_DTYPES[n]))
               for n, v in parts.items()}
    meta = {"format": FORMAT, "k": str(k), "head": head_fingerprint(head),
            "source": str(shard), "sequences": str(len(off) - 1)}
    tmp = out.with_suffix(".tmp")
    save_file({n: v.contiguous() for n, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.rename(out)
    return int(tensors["label"].numel())


_DTYPES = {"token": torch.int64, "hidden": torch.bfloat16, "label": torch.int8,
           "known": torch.int8, "conv": torch.int64, "pos": torch.int32}


def _shard_ok(path: Path, k: int, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a torn file from a killed run: redo it
        return False
    return (meta.get("format") == FORMAT and int(meta.get("k", 0)) >= k
            and meta.get("head") == fingerprint)


def response_positions(shard: Path) -> int:
    """Positions a shard will label (response tokens minus the last two of each sequence)."""
    with safe_open(str(shard), framework="pt") as f:
        mask = f.get_tensor("loss_mask").bool()
        off = f.get_tensor("offsets").tolist()
    return sum(max(0, int(mask[a:b].sum()) - 1) for a, b in zip(off, off[1:], strict=False))


def collect(head: EagleHead, feature_shards: Sequence[Path], out_dir: Path, k: int,
            eos_ids: Sequence[int], progress: bool = True) -> tuple[list[Path], dict]:
    """Label every feature shard into ``out_dir/shard_XXXXX.safetensors``; shards already
    labelled with this head and at least this k are kept (resume). Conversation ids are the
    sequences' global order over ``feature_shards``.

    Returns:
        (label shard paths, {"positions", "labelled_s", "new_positions"}).
    """
    import time

    out_dir.mkdir(parents=True, exist_ok=True)
    fp = head_fingerprint(head)
    counts = []
    for p in feature_shards:
        with safe_open(str(p), framework="pt") as f:
            counts.append(f.get_slice("offsets").get_shape()[0] - 1)
    total = sum(response_positions(p) for p in feature_shards)
    bar = tqdm(total=total, desc="LDLP labels", unit="pos", disable=not progress)
    paths, conv, new, t0 = [], 0, 0, time.perf_counter()
    for i, shard in enumerate(feature_shards):
        path = out_dir / f"shard_{i:05d}.safetensors"
        paths.append(path)
        if _shard_ok(path, k, fp):
            bar.update(response_positions(shard))
        else:
            new += label_shard(head, shard, path, k, eos_ids, conv, bar)
        conv += counts[i]
    bar.close()
    return paths, {"positions": total, "new_positions": new,
                   "labelled_s": time.perf_counter() - t0}


@dataclass
class LabelSet:
    """All labelled positions: tokens int64 [N], hidden bf16 [N, H], label/known int64 [N],
    conv int64 [N], k (the collection's chain length)."""

    token: torch.Tensor
    hidden: torch.Tensor
    label: torch.Tensor
    known: torch.Tensor
    conv: torch.Tensor
    k: int

    def usable(self, k_max: int) -> torch.Tensor:
        """bool [N]: positions whose label clamped to ``k_max`` is exact (not cut short by a
        truncated response)."""
        return (self.label < self.known) | (self.known >= k_max)

    def histogram(self, k_max: int | None = None) -> list[int]:
        """Counts of min(label, k_max) over usable positions, index = length."""
        k_max = self.k if k_max is None else k_max
        lab = self.label[self.usable(k_max)].clamp(max=k_max)
        return torch.bincount(lab, minlength=k_max + 1).tolist()


def load_labels(paths: Sequence[Path]) -> LabelSet:
    """Concatenate label shards (the smallest collection k among them is the set's k)."""
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in _DTYPES}
    ks = []
    for p in paths:
        with safe_open(str(p), framework="pt") as f:
            ks.append(int((f.metadata() or {})["k"]))
            for n in parts:
                parts[n].append(f.get_tensor(n))
    if not ks:
        raise ValueError("no label shards given")
    k = min(ks)
    cat = {n: torch.cat(v) for n, v in parts.items()}
    label = cat["label"].to(torch.int64).clamp(max=k)
    known = cat["known"].to(torch.int64).clamp(max=k)
    return LabelSet(cat["token"], cat["hidden"], label, known, cat["conv"], k)


def summary_of(labels: LabelSet) -> dict:
    """Counts for the run record: positions, conversations, histogram, mean label."""
    use = labels.usable(labels.k)
    return {"positions": int(labels.label.numel()), "usable_positions": int(use.sum()),
            "conversations": int(labels.conv.unique().numel()), "k": labels.k,
            "histogram": labels.histogram(),
            "mean_label": float(labels.label[use].float().mean()) if use.any() else 0.0}


def write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))
