"""Training sequences for the EAGLE head: tokenised chats, optional self-distilled responses,
and the target's final-normed hidden states ("features"), cached as safetensors shards.

A sequence is the chat-templated prompt followed by the assistant response and its end-of-turn
token. ``loss_mask[j]`` is 1 where the target predicts a response token from position j (the
last prompt token up to the token before the response's last one). Shard tensors (T tokens of
S sequences): ``tokens`` int64 [T], ``features`` bf16 [T, H], ``loss_mask`` uint8 [T],
``argmax`` int64 [T] (the target's greedy next token where ``loss_mask`` is 1, else -1),
``offsets`` int64 [S+1].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from adaeagle_ext.models.tree_inputs import MAX_TREE_NODES, chain_inputs
from adaeagle_ext.spec.generate import generate_ids


@dataclass
class TokenisedChat:
    prompt: list[int]
    response: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.response


def tokenise(convs, tokenizer, eos_id: int, max_len: int) -> list[TokenisedChat]:
    """Chat-template the prompts; tokenise the reference responses (+ ``eos_id``); truncate
    to ``max_len`` tokens. Prompts longer than ``max_len - 32`` are dropped."""
    out = []
    for c in convs:
        prompt = tokenizer.encode(c.prompt, chat=True)
        if len(prompt) > max_len - 32:
            continue
        resp = []
        if c.response:
            resp = list(tokenizer.hf(c.response, add_special_tokens=False)["input_ids"])
            resp = (resp + [eos_id])[: max_len - len(prompt)]
        out.append(TokenisedChat(prompt, resp))
    return out


def distill(model, chats: list[TokenisedChat], eos_ids: Sequence[int], max_new_tokens: int,
            batch_size: int = 16, progress: bool = True) -> list[TokenisedChat]:
    """Replace each response by the target's own greedy answer (batched ``generate_ids``);
    an answer that ends with EOS keeps it."""
    order = sorted(range(len(chats)), key=lambda i: len(chats[i].prompt))
    out: list[TokenisedChat | None] = [None] * len(chats)
    bar = tqdm(total=len(chats), desc="self-distillation", unit="chat", disable=not progress)
    eos = list(eos_ids)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        res, stats = generate_ids(model, [chats[i].prompt for i in idx],
                                  max_new_tokens=max_new_tokens, eos_ids=eos)
        for i, r in zip(idx, res, strict=True):
            tail = [eos[0]] if r.finish_reason == "eos" and eos else []
            out[i] = TokenisedChat(chats[i].prompt, r.token_ids + tail)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{stats.tokens_per_s:.0f}")
    bar.close()
    return out


def distill_resumable(model, chats: list[TokenisedChat], eos_ids: Sequence[int],
                      max_new_tokens: int, partial: Path, block: int = 64,
                      batch_size: int = 16) -> list[TokenisedChat]:
    """``distill`` in blocks of ``block`` chats, saving the answers so far to ``partial`` after
    each block; a rerun with the same ``chats`` resumes after the last saved block."""
    done = load_chats(partial) if partial.is_file() else []
    if done and [c.prompt for c in done] != [c.prompt for c in chats[:len(done)]]:
        raise SystemExit(f"error: {partial} holds other prompts (different --seed, --data or "
                         "--conversations?); remove it or use another --name")
    for s in range(len(done), len(chats), block):
        print(f"self-distillation: conversations {s}..{min(s + block, len(chats))} of "
              f"{len(chats)}")
        done += distill(model, chats[s:s + block], eos_ids, max_new_tokens,
                        batch_size=batch_size)
        save_chats(done, partial)
    return done


@torch.inference_mode()
def target_features(model, seqs: list[list[int]], logits_from: list[int] | None = None):
    """Run the target over a batch of token sequences (chunks of 64 through its KV cache).

    Args:
        seqs: B token-id lists. logits_from: per sequence, the first position whose greedy
            next token is wanted (default 0); earlier positions get -1 (saves LM-head work).

    Returns:
        per sequence: (features [L, H] in the model dtype, logits argmax int64 [L]).
    """
    lens = [len(s) for s in seqs]
    logits_from = logits_from or [0] * len(seqs)
    cache = model.new_cache(len(seqs), max(lens))
    feats = [[] for _ in seqs]
    amax = [[] for _ in seqs]
    for start in range(0, max(lens), MAX_TREE_NODES):
        sizes = torch.tensor([max(0, min(MAX_TREE_NODES, n - start)) for n in lens])
        prefix = torch.tensor([min(start, n) for n in lens], dtype=torch.int32)
        positions, indptr, bits = chain_inputs(sizes, prefix)
        tokens = torch.tensor([t for s in seqs for t in s[start:start + MAX_TREE_NODES]])
        ends = indptr[1:].tolist()
        rows = torch.cat([torch.arange(min(int(indptr[b]) + max(0, logits_from[b] - start),
                                           ends[b]), ends[b]) for b in range(len(seqs))])
        logits, hidden = model(tokens, positions, indptr, bits, prefix, cache, logit_rows=rows)
        top = torch.full((tokens.numel(),), -1, dtype=torch.int64)
        top[rows] = logits.argmax(-1)
        for b in range(len(seqs)):
            lo, hi = int(indptr[b]), int(indptr[b + 1])
            if hi > lo:
                feats[b].append(hidden[lo:hi])
                amax[b].append(top[lo:hi])
    return [(torch.cat(f), torch.cat(a)) for f, a in zip(feats, amax, strict=True)]


def write_shards(model, chats: list[TokenisedChat], out_dir: Path, shard_size: int = 64,
                 batch_size: int = 8, progress: bool = True) -> list[Path]:
    """Extract features of ``chats`` into ``out_dir/shard_XXXXX.safetensors``; shards already
    there (from an interrupted run) are kept and skipped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    bar = tqdm(total=sum(len(c.ids) for c in chats), desc="features", unit="tok",
               unit_scale=True, disable=not progress)
    for s in range(0, len(chats), shard_size):
        part = chats[s:s + shard_size]
        path = out_dir / f"shard_{s // shard_size:05d}.safetensors"
        paths.append(path)
        if path.is_file():
            bar.update(sum(len(c.ids) for c in part))
            continue
        order = sorted(range(len(part)), key=lambda i: len(part[i].ids))
        results: dict[int, tuple] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            got = target_features(model, [part[i].ids for i in idx],
                                  [len(part[i].prompt) - 1 for i in idx])
            for i, r in zip(idx, got, strict=True):
                results[i] = r
            bar.update(sum(len(part[i].ids) for i in idx))
        tokens, feats, mask, amax, offsets = [], [], [], [], [0]
        for i, c in enumerate(part):
            f, a = results[i]
            n, p = len(c.ids), len(c.prompt)
            m = torch.zeros(n, dtype=torch.uint8)
            m[p - 1: n - 1] = 1
            tokens.append(torch.tensor(c.ids))
            feats.append(f.to(torch.bfloat16))
            mask.append(m)
            amax.append(torch.where(m.bool(), a, torch.full_like(a, -1)))
            offsets.append(offsets[-1] + n)
        tmp = path.with_suffix(".tmp")
        save_file({"tokens": torch.cat(tokens), "features": torch.cat(feats),
                   "loss_mask": torch.cat(mask), "argmax": torch.cat(amax),
                   "offsets": torch.tensor(offsets)}, str(tmp))
        tmp.rename(path)
    bar.close()
    return paths


@dataclass
class FeatureSequence:
    tokens: torch.Tensor  # int64 [L]
    features: torch.Tensor  # bf16 [L, H]
    loss_mask: torch.Tensor  # bool [L]
    argmax: torch.Tensor  # int64 [L]


def load_shards(paths: Sequence[Path]) -> list[FeatureSequence]:
    out = []
    for p in paths:
        t = load_file(str(p))
        off = t["offsets"].tolist()
        for a, b in zip(off, off[1:], strict=False):
            out.append(FeatureSequence(t["tokens"][a:b], t["features"][a:b],
                                       t["loss_mask"][a:b].bool(), t["argmax"][a:b]))
    return out


def save_chats(chats: list[TokenisedChat], path: Path) -> None:
    path.write_text(json.dumps([[c.prompt, c.response] for c in chats]))


def load_chats(path: Path) -> list[TokenisedChat]:
    return [TokenisedChat(p, r) for p, r in json.loads(path.read_text())]
