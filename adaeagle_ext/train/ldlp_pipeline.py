"""``adaeagle train-ldlp``: distilled chats -> target features -> chain labels -> LDLP (sweep).

Work folder ``$ADAEAGLE_HOME/ldlp_train/<name>``; every stage resumes from what is there:
``chats.partial.json`` / ``chats.json`` (self-distilled conversations, saved every 64),
``features/shard_*.safetensors`` (or a head run's own cached features with ``--chats-from``),
``labels/shard_*.safetensors`` (redone only for another head or a larger k_max), then
``sweep.json`` / ``sweep.md``, ``summary.json`` and ``ldlp.safetensors``.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path

from safetensors import safe_open

from adaeagle_ext.drafters.eagle_head import EagleHead, dense_embedding, embedding_fingerprint
from adaeagle_ext.models.fetch import adaeagle_home
from adaeagle_ext.spec.eagle_base import DEFAULT_HEAD_PATH
from adaeagle_ext.train.conversations import (
    DEFAULT_DATA_ROOT,
    PERMISSIVE_SOURCES,
    evaluation_prompts,
    training_mix,
)
from adaeagle_ext.train.features import (
    TokenisedChat,
    distill_resumable,
    load_chats,
    save_chats,
    tokenise,
    write_shards,
)
from adaeagle_ext.train.ldlp_labels import collect, load_labels, summary_of, write_json
from adaeagle_ext.train.ldlp_train import (
    LdlpTrainConfig,
    examples,
    split_conversations,
    sweep_markdown,
    train_ldlp,
)

SHARD_SIZE = 64  # conversations per feature / label shard (write_shards' default)
SWEEP_GRID = {"width": [64, 128, 256], "lam": [1.0, 2.0, 3.0, 4.0], "k_max": [6, 8]}
SINGLE = {"width": [128], "lam": [3.0], "k_max": [8]}


def add_parser(sub) -> None:
    p = sub.add_parser("train-ldlp", help="collect draft-length labels with an EAGLE head and "
                                          "train the LDLP (AdaEAGLE)")
    p.add_argument("--model", default=None, help="target (default: SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--head", default=None, help="EAGLE head file (default: the shipped "
                                                "head for the default model)")
    p.add_argument("--name", default="default", help="work folder under "
                                                     "$ADAEAGLE_HOME/ldlp_train")
    p.add_argument("--chats-from", default=None, metavar="RUN",
                   help="use the self-distilled chats (and cached features) of the head "
                        "run $ADAEAGLE_HOME/eagle_train/RUN instead of distilling new ones")
    p.add_argument("--redistill", action="store_true",
                   help="with --chats-from: answer that run's prompts with the target again "
                        "(for runs trained on reference answers)")
    p.add_argument("--data", action="append", default=[],
                   help="prompt file or folder (repeatable; default: the permissive sources)")
    p.add_argument("--conversations", type=int, default=400,
                   help="conversations to distil (without --chats-from)")
    p.add_argument("--exclude-from", action="append", default=None, metavar="RUN",
                   help="drop conversations whose prompt a head run used (repeatable; "
                        "default: every run under $ADAEAGLE_HOME/eagle_train)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--max-len", type=int, default=640)
    p.add_argument("--k-max", type=int, nargs="+", default=None,
                   help="cap(s) on the draft length (sweep values; default 8, sweep 6 8)")
    p.add_argument("--width", type=int, nargs="+", default=None,
                   help="LDLP width(s) W (default 128, sweep 64 128 256)")
    p.add_argument("--lam", type=float, nargs="+", default=None,
                   help="under-prediction weight(s) (default 3, sweep 1 2 3 4)")
    p.add_argument("--sweep", action="store_true",
                   help="train every combination (defaults fill the unset knobs) and keep "
                        "the best on the validation split")
    p.add_argument("--epochs", type=float, default=LdlpTrainConfig.epochs)
    p.add_argument("--lr", type=float, default=LdlpTrainConfig.lr)
    p.add_argument("--batch", type=int, default=LdlpTrainConfig.batch)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of conversations held out for validation")
    p.add_argument("--cost-ratio", type=float, default=0.2,
                   help="cost of one draft token / one target step, for the speed proxy "
                        "that picks the sweep's winner")
    p.add_argument("--time-limit", type=float, default=None,
                   help="minutes of LDLP training at most (shared by the sweep)")
    p.add_argument("--out", default=None,
                   help="LDLP file (default: <work folder>/ldlp.safetensors)")
    p.set_defaults(run=run)


def knob_grid(args) -> list[tuple[int, float, int]]:
    """(width, lam, k_max) combinations from the arguments."""
    base = SWEEP_GRID if args.sweep else SINGLE
    widths = args.width or base["width"]
    lams = args.lam or base["lam"]
    kms = args.k_max or base["k_max"]
    for name, vals, lo in (("--width", widths, 1), ("--k-max", kms, 1)):
        if min(vals) < lo:
            raise SystemExit(f"error: {name} must be >= {lo}, got {vals}")
    if min(lams) <= 0:
        raise SystemExit(f"error: --lam must be > 0, got {lams}")
    return [(w, lam, k) for k in kms for w in widths for lam in lams]


def excluded_prompts(runs: list[str] | None) -> tuple[set[tuple[int, ...]], list[str]]:
    """Token-id prompts of the named head runs' chats (default: every run with chats)."""
    root = adaeagle_home() / "eagle_train"
    if runs is None:
        runs = sorted(p.parent.name for p in root.glob("*/chats.json"))
    out = set()
    for r in runs:
        path = root / r / "chats.json"
        if not path.is_file():
            raise SystemExit(f"error: --exclude-from {r}: no {path}")
        out.update(tuple(c.prompt) for c in load_chats(path))
    return out, runs


def own_chats(args, model, tok, eos_ids, work: Path) -> tuple[list[TokenisedChat], dict]:
    """Draw, tokenise and distil ``--conversations`` prompts not used by the excluded runs."""
    paths = args.data or [DEFAULT_DATA_ROOT / rel for rel, _ in PERMISSIVE_SOURCES]
    excluded, runs = excluded_prompts(args.exclude_from)
    root = Path(paths[0]).parent if args.data else DEFAULT_DATA_ROOT
    convs = training_mix(paths, args.conversations + len(excluded), args.seed,
                         exclude=evaluation_prompts(root if root.name == "train"
                                                    else DEFAULT_DATA_ROOT))
    chats = [c for c in tokenise(convs, tok, eos_ids[0], args.max_len)
             if tuple(c.prompt) not in excluded][: args.conversations]
    t = time.perf_counter()
    chats = distill_resumable(model, chats, eos_ids, min(args.max_new_tokens, args.max_len),
                              work / "chats.partial.json", block=SHARD_SIZE)
    info = {"distill_s": time.perf_counter() - t, "excluded_runs": runs,
            "sources": [str(p) for p in paths]}
    return [c for c in chats if len(c.response) > 1], info


def greedy_agreement(shards: list[Path], limit: int = 4) -> float:
    """Share of response positions where the target's argmax is the next token (1.0 for
    self-distilled data, up to numerics), over the first ``limit`` shards."""
    hit = total = 0
    for p in shards[:limit]:
        with safe_open(str(p), framework="pt") as f:
            tokens, mask, amax = (f.get_tensor(n) for n in ("tokens", "loss_mask", "argmax"))
        m = mask[:-1].bool()
        hit += int((amax[:-1][m] == tokens[1:][m]).sum())
        total += int(m.sum())
    return hit / max(total, 1)


def feature_shards(model, chats: list[TokenisedChat], src: Path | None,
                   work: Path) -> list[Path]:
    """A head run's cached feature shards when they cover all its chats, else our own."""
    if src is not None:
        want = math.ceil(len(chats) / SHARD_SIZE)
        have = sorted((src / "features").glob("shard_*.safetensors"))
        if len(have) == want:
            print(f"using the {want} cached feature shards of {src}")
            return have
        print(f"{src}/features holds {len(have)} of {want} shards: extracting features here")
    return write_shards(model, chats, work / "features", shard_size=SHARD_SIZE)


def run(args) -> int:
    from adaeagle_ext.api import load

    t0 = time.perf_counter()
    grid = knob_grid(args)
    work = adaeagle_home() / "ldlp_train" / args.name
    work.mkdir(parents=True, exist_ok=True)
    pipe = load(args.model, dtype="float32", threads=args.threads)
    model, tok = pipe.model, pipe.tokenizer
    eos_ids = pipe._eos_ids()
    head_path = Path(args.head) if args.head else DEFAULT_HEAD_PATH
    head = EagleHead.load(head_path, model)
    if not head.matches(model):
        raise SystemExit(f"error: {head_path} was trained for a different target")
    record: dict = {"head": str(head_path), "command": "adaeagle train-ldlp " + " ".join(
        shlex.quote(a) for a in sys.argv[2:])}

    src = None
    if args.chats_from:
        src = adaeagle_home() / "eagle_train" / args.chats_from
        if not (src / "chats.json").is_file():
            raise SystemExit(f"error: --chats-from {args.chats_from}: no {src / 'chats.json'}")
        chats = load_chats(src / "chats.json")
        record["chats_from"] = args.chats_from
        if args.redistill:
            t = time.perf_counter()
            chats = distill_resumable(model, [TokenisedChat(c.prompt, []) for c in chats],
                                      eos_ids, min(args.max_new_tokens, args.max_len),
                                      work / "chats.partial.json", block=SHARD_SIZE)
            chats = [c for c in chats if len(c.response) > 1]
            record["distill_s"] = time.perf_counter() - t
            src = None  # the run's features belong to its old answers
    elif (work / "chats.json").is_file():
        chats = load_chats(work / "chats.json")
        print(f"{len(chats)} conversations from {work / 'chats.json'}")
    else:
        chats, info = own_chats(args, model, tok, eos_ids, work)
        record.update(info)
    if src is None:
        save_chats(chats, work / "chats.json")
    record["conversations"] = len(chats)
    t = time.perf_counter()
    shards = feature_shards(model, chats, src, work)
    record["features_s"] = time.perf_counter() - t
    agree = greedy_agreement(shards)
    record["greedy_agreement"] = agree
    if agree < 0.9:
        raise SystemExit(f"error: only {agree:.2f} of the response tokens are the target's "
                         "greedy choice: the chats are not self-distilled (labels need the "
                         "target's own continuation); add --redistill")

    k_collect = max(k for _, _, k in grid)
    paths, info = collect(head, shards, work / "labels", k_collect, eos_ids)
    record.update(label_positions=info["positions"], labelled_new=info["new_positions"],
                  label_s=info["labelled_s"])
    if info["new_positions"]:
        rate = info["new_positions"] / max(info["labelled_s"], 1e-9)
        record["label_positions_per_s"] = rate
        print(f"labelled {info['new_positions']} positions in {info['labelled_s']:.0f} s "
              f"({rate:.0f}/s)")
    labels = load_labels(paths)
    record["labels"] = summary_of(labels)
    print(f"label histogram (k={labels.k}): {record['labels']['histogram']}")

    embedding = dense_embedding(model).float()
    held = split_conversations(labels.conv, args.val_fraction, args.seed)
    record["val_conversations"] = int(labels.conv[held].unique().numel())
    limit = None if args.time_limit is None else args.time_limit * 60 / len(grid)
    runs, best = [], None
    data: dict[int, tuple] = {}
    for width, lam, k_max in grid:
        if k_max not in data:
            data[k_max] = (examples(labels, embedding, k_max, ~held),
                           examples(labels, embedding, k_max, held))
        cfg = LdlpTrainConfig(width=width, lam=lam, k_max=k_max, epochs=args.epochs,
                              lr=args.lr, batch=args.batch, seed=args.seed,
                              time_limit_s=limit)
        module, rec = train_ldlp(*data[k_max], cfg, args.cost_ratio, progress=True)
        v = rec["val"]
        print(f"W={width} lam={lam:g} k_max={k_max}: val MAE {v['mae']:.3f}, signed "
              f"{v['signed']:+.3f}, exact {v['exact']:.3f}, accepted {v['accepted']:.3f}, "
              f"mean pred {v['mean_pred']:.2f}, proxy {v['speed_proxy']:.4f} (best fixed "
              f"k={v['best_fixed']}: {v['best_fixed_proxy']:.4f}) [{rec['train_s']:.0f} s]")
        runs.append(rec)
        if best is None or v["speed_proxy"] > best[1]["val"]["speed_proxy"]:
            best = (module, rec)
    module, rec = best
    write_json(runs, work / "sweep.json")
    (work / "sweep.md").write_text(sweep_markdown(runs, args.cost_ratio))
    record.update(chosen=rec, sweep_size=len(runs), cost_ratio=args.cost_ratio,
                  val_fraction=args.val_fraction, wall_s=time.perf_counter() - t0,
                  train_s_total=sum(r["train_s"] for r in runs))
    out = Path(args.out) if args.out else work / "ldlp.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: record[k] for k in ("head", "conversations", "label_positions", "labels",
                                    "cost_ratio", "command")}
    extra["train"] = {k: rec[k] for k in ("config", "steps", "train_s", "final_loss", "val")}
    module.save(out, k_max=rec["config"]["k_max"], target_fingerprint=embedding_fingerprint(model),
                extra=extra)
    write_json(record, work / "summary.json")
    c = rec["config"]
    print(f"chosen W={c['width']} lam={c['lam']:g} k_max={c['k_max']}; wrote {out} and "
          f"{work / 'summary.json'}")
    return 0

