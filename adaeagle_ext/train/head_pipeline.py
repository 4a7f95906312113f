"""``adaeagle train-head``: data -> (self-distillation) -> features -> training -> head file.

Every stage caches its result in the run's work folder (``$ADAEAGLE_HOME/eagle_train/<run>``)
so an interrupted run picks up where it stopped: ``chats.partial.json`` (the answers of
self-distillation so far, saved every 64 prompts), ``chats.json`` (tokenised, possibly
self-distilled conversations), ``features/shard_*.safetensors`` and ``checkpoint.safetensors``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.models.fetch import adaeagle_home
from adaeagle_ext.train.conversations import (
    DEFAULT_DATA_ROOT,
    PERMISSIVE_SOURCES,
    evaluation_prompts,
    training_mix,
)
from adaeagle_ext.train.features import (
    distill_resumable,
    load_chats,
    load_shards,
    save_chats,
    tokenise,
    write_shards,
)
from adaeagle_ext.train.train_head import (
    TrainConfig,
    choose_draft_vocab,
    split,
    train,
    vocab_coverage,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train-head", help="train an EAGLE draft head for a target model")
    p.add_argument("--model", default=None, help="target (default: SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", action="append", default=[],
                   help="training file or folder (repeatable; default: the permissive "
                        "sources under the workplace's shared/data/train)")
    p.add_argument("--conversations", type=int, default=600, help="how many to use")
    p.add_argument("--distill", action=argparse_bool(), default=True,
                   help="answer the prompts with the target itself (default on)")
    p.add_argument("--distill-batch", type=int, default=16,
                   help="prompts answered together during self-distillation")
    p.add_argument("--max-new-tokens", type=int, default=160,
                   help="self-distillation answer length")
    p.add_argument("--max-len", type=int, default=640, help="tokens per sequence")
    p.add_argument("--draft-vocab", type=int, default=8192,
                   help="reduced draft vocabulary size (0: the full vocabulary)")
    p.add_argument("--epochs", type=float, default=TrainConfig.epochs)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--batch-tokens", type=int, default=TrainConfig.batch_tokens)
    p.add_argument("--noise", type=float, default=TrainConfig.noise)
    p.add_argument("--unroll", type=int, default=TrainConfig.unroll,
                   help="drafting steps trained per position on the head's own predictions "
                        "(1: EAGLE-1; 2-3: training-time test, for longer drafts)")
    p.add_argument("--init-from", default=None,
                   help="start from this head file (its draft vocabulary is kept)")
    p.add_argument("--time-limit", type=float, default=None, help="training minutes at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="default", help="work folder name under "
                                                     "$ADAEAGLE_HOME/eagle_train")
    p.add_argument("--features-from", action="append", default=[],
                   help="also train on the cached features of another run (its --name; "
                        "repeatable); its prompts are not drawn again")
    p.add_argument("--extract-only", action="store_true",
                   help="stop after caching the features")
    p.add_argument("--out", default=None, help="head file (default: <work folder>/"
                                               "eagle_head.safetensors)")
    p.set_defaults(run=run)


def prompts_of_runs(names: list[str]) -> set[tuple[int, ...]]:
    """Token ids of every prompt the named runs already answered, so a new run draws others."""
    taken = set()
    for name in names:
        path = adaeagle_home() / "eagle_train" / name / "chats.json"
        if path.is_file():
            taken.update(tuple(c.prompt) for c in load_chats(path))
    return taken


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def run(args) -> int:
    from adaeagle_ext.api import load

    t0 = time.perf_counter()
    work = adaeagle_home() / "eagle_train" / args.name
    work.mkdir(parents=True, exist_ok=True)
    pipe = load(args.model, dtype="float32", threads=args.threads)
    model, tok = pipe.model, pipe.tokenizer
    eos_ids = pipe._eos_ids()
    timings = {}

    chats_path = work / "chats.json"
    if chats_path.is_file():
        chats = load_chats(chats_path)
        print(f"{len(chats)} conversations from {chats_path}")
    else:
        paths = args.data or [DEFAULT_DATA_ROOT / rel for rel, _ in PERMISSIVE_SOURCES]
        root = Path(paths[0]).parent if args.data else DEFAULT_DATA_ROOT
        taken = prompts_of_runs(args.features_from)
        convs = training_mix(paths, args.conversations + len(taken), args.seed,
                             need_response=not args.distill,
                             exclude=evaluation_prompts(root if root.name == "train"
                                                        else DEFAULT_DATA_ROOT))
        chats = [c for c in tokenise(convs, tok, eos_ids[0], args.max_len)
                 if tuple(c.prompt) not in taken][:args.conversations]
        if args.distill:
            t = time.perf_counter()
            chats = distill_resumable(model, chats, eos_ids,
                                      min(args.max_new_tokens, args.max_len),
                                      work / "chats.partial.json",
                                      batch_size=args.distill_batch)
            timings["distill_s"] = time.perf_counter() - t
        chats = [c for c in chats if len(c.response) > 1]
        save_chats(chats, chats_path)
    t = time.perf_counter()
    shards = write_shards(model, chats, work / "features")
    timings["features_s"] = time.perf_counter() - t
    if args.extract_only:
        print(f"features cached in {work / 'features'}")
        return 0
    groups = [shards]
    for other in args.features_from:
        extra = sorted((adaeagle_home() / "eagle_train" / other / "features")
                       .glob("shard_*.safetensors"))
        if not extra:
            raise SystemExit(f"error: run {other!r} has no cached features")
        groups.append(extra)
    # Each run is split on its own, as it was when it trained alone, so that no earlier run's
    # training sequence lands in the held-out set (a head started --init-from it saw them).
    seqs, train_seqs, held, seen = [], [], [], set()
    for group in groups:
        mine = []
        for s in load_shards(group):  # runs may share a conversation: keep one copy
            key = tuple(s.tokens.tolist())
            if key not in seen:
                seen.add(key)
                mine.append(s)
        tr, he = split(mine, TrainConfig.heldout_fraction, args.seed)
        seqs += mine
        train_seqs += tr
        held += he
    n_tok = sum(len(s.tokens) for s in seqs)
    n_resp = sum(int(s.loss_mask.sum()) for s in seqs)
    print(f"{len(seqs)} sequences, {n_tok} tokens ({n_resp} response positions); "
          f"{len(held)} held out")

    vocab = None
    coverage = {}
    V = model.config.vocab_size
    if args.draft_vocab:
        for size in sorted({2048, 4096, 8192, 16384, args.draft_vocab}):
            coverage[size] = vocab_coverage(held, choose_draft_vocab(train_seqs, size, V, eos_ids))
        print("held-out coverage of the target's greedy tokens by draft vocab size: " +
              ", ".join(f"{k}: {v:.3f}" for k, v in coverage.items()))
        vocab = choose_draft_vocab(train_seqs, args.draft_vocab, V, eos_ids)
    torch.manual_seed(args.seed)
    if args.init_from:
        head = EagleHead.load(args.init_from, target=model)  # keeps its draft vocabulary
    else:
        head = EagleHead.for_target(model, vocab, seed=args.seed)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_tokens=args.batch_tokens,
                      noise=args.noise, seed=args.seed, unroll=args.unroll,
                      time_limit_s=None if args.time_limit is None else args.time_limit * 60)
    summary = train(head, train_seqs, held, cfg, work / "checkpoint.safetensors")
    command = "adaeagle train-head " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    summary.update(timings, sequences=len(seqs), tokens=n_tok, response_positions=n_resp,
                   heldout_sequences=len(held), draft_vocab=args.draft_vocab,
                   unroll=args.unroll, init_from=args.init_from,
                   coverage=coverage, distill=args.distill, command=command,
                   wall_s=time.perf_counter() - t0,
                   sources=sorted({s for s in (args.data or [r for r, _ in PERMISSIVE_SOURCES])}))
    out = Path(args.out) if args.out else work / "eagle_head.safetensors"
    head.save(out, dtype=torch.bfloat16, extra={k: v for k, v in summary.items()
                                                if k in ("steps", "final_loss", "heldout")})
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: summary[k] for k in ("steps", "train_s", "final_loss", "heldout")},
                     default=str))
    print(f"wrote {out}")
    return 0
