"""Held-out top-1 per draft step of EAGLE heads, each train-head run's own split (5%, seed 0).

    python benchmarks/eval_head_heldout.py HEAD [HEAD ...] [--runs distill1 distill2 distill3]

Runs the cached features of ``$ADAEAGLE_HOME/eagle_train/<run>`` (as ``adaeagle train-head``
splits them) through ``train_head.evaluate`` with three unrolled steps: step d drafts token d
of a chain from the head's own features, teacher-forced tokens.
"""

from __future__ import annotations

import argparse
import json

import torch

from adaeagle_ext.api import load
from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.models.fetch import adaeagle_home
from adaeagle_ext.train.features import load_shards
from adaeagle_ext.train.train_head import TrainConfig, evaluate, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads", nargs="+", help="eagle_head.safetensors files")
    ap.add_argument("--runs", nargs="+", default=["distill1", "distill2", "distill3"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    pipe = load(None, dtype="float32", threads=args.threads, progress=False)
    heads = {path: EagleHead.load(path, target=pipe.model) for path in args.heads}
    cfg = TrainConfig(unroll=3)
    for run in args.runs:
        shards = sorted((adaeagle_home() / "eagle_train" / run / "features")
                        .glob("shard_*.safetensors"))
        _, held = split(load_shards(shards), TrainConfig.heldout_fraction, 0)
        for path, head in heads.items():
            with torch.no_grad():
                result = evaluate(head, held, cfg, torch.float32)
            print(json.dumps({"run": run, "head": path, "sequences": len(held), **result}))


if __name__ == "__main__":
    main()
