"""How often `aded`'s first draft is accepted, by the tri-gram value of its edge (the value
`aded-conf` thresholds with `min_value`), on training prompts.

    cd benchmarks && python aded_value_calibration.py [--train 20 --seed 5] [--max-nodes 2]

Greedy decoding with `aded` (the given tree size); per step, the largest edge value among the
root's children (stored probability or the online overlay's reinforced value) against whether
a draft was accepted. Prompts: `decode_sweep.training_prompts` (no evaluation prompt).
"""

from __future__ import annotations

import argparse

from decode_sweep import training_prompts

from adaeagle_ext.api import load
from adaeagle_ext.spec.aded import Aded

BINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 3.01)


class ValueRecorder(Aded):
    """``aded`` that records, per proposed tree, the best edge value of the root's children."""

    name = "aded-value-recorder"

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.values: list[float] = []
        for drafter in self.drafters:
            drafter.propose = self._recording(drafter, drafter.propose)

    def _recording(self, drafter, propose):
        def wrapped(context_ids=None):
            parents, tokens = propose(context_ids)
            ctx = drafter.context
            kids = [int(t) for p, t in zip(parents.tolist()[1:], tokens.tolist()[1:],
                                           strict=True) if p == 0]
            self.values.append(max((drafter.online.value(ctx[-2], ctx[-1], t) for t in kids),
                                   default=0.0) if len(ctx) >= 2 else float("nan"))
            return parents, tokens
        return wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=20)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--max-nodes", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    p = load(None, dtype="bfloat16", threads=args.threads, progress=False)
    pairs: list[tuple[float, bool]] = []
    for prompt in training_prompts(args.train, args.seed):
        strategy = ValueRecorder(max_nodes=args.max_nodes)
        stats = p.generate(prompt, method=strategy, max_new_tokens=args.max_new_tokens).stats
        drafted = [a for a, d in zip(stats.accepted_per_step, stats.draft_tokens, strict=True)
                   if d > 0]  # steps with a tree: the ones that called the search
        pairs += [(v, a > 1) for v, a in zip(strategy.values, drafted, strict=True)]
    print(f"{args.train} training prompts (seed {args.seed}), aded max_nodes={args.max_nodes}, "
          f"{len(pairs)} drafted steps")
    print("| first-draft value | share of steps | first draft accepted |")
    print("|---|---:|---:|")
    for lo, hi in zip(BINS, BINS[1:], strict=False):
        got = [acc for v, acc in pairs if lo <= v < hi]
        if got:
            print(f"| [{lo:.2f}, {hi:.2f}) | {len(got) / len(pairs):.1%} | "
                  f"{sum(got) / len(got):.3f} |")


if __name__ == "__main__":
    main()
