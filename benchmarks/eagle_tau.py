"""τ and tokens/s of the EAGLE-head strategies vs ``ar`` on a few Spec-Bench prompts.

    python benchmarks/eagle_tau.py --per-category 1 --max-new-tokens 64 --threads 2 \\
        --methods ar chain:3 eagle eagle2 [--head PATH] [--dtype float32]

One prompt at a time (batch 1), greedy, EOS off so every method generates the same number of
tokens; each method's tokens are checked against ``ar``'s. τ = tokens committed per target
step (bonus token included). The machine is shared: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import adaeagle_ext
from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.eagle import EagleTree
from adaeagle_ext.spec.eagle2 import Eagle2
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.train.conversations import DEFAULT_DATA_ROOT

SPEC_BENCH = DEFAULT_DATA_ROOT.parent / "spec_bench" / "question.jsonl"
TASKS = ("writing", "translation", "summarization", "qa", "math_reasoning", "rag")


def spec_bench_prompts(per_category: int, path: Path = SPEC_BENCH) -> list[tuple[str, str]]:
    """(category, first turn) of the first ``per_category`` questions of each task (MT-bench
    is represented by its writing category)."""
    seen: dict[str, int] = {}
    out = []
    for line in path.read_text().splitlines():
        q = json.loads(line)
        cat = q["category"]
        if cat in TASKS and seen.get(cat, 0) < per_category:
            seen[cat] = seen.get(cat, 0) + 1
            out.append((cat, q["turns"][0]))
    return out


def make(method: str, head):
    name, _, spec = method.partition(":")
    if name == "chain":
        return EagleChain(spec or None, head=head)
    if name == "eagle":
        return EagleTree(spec or None, head=head)
    if name == "eagle2":
        return Eagle2(spec or None, head=head)
    return method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--methods", nargs="+", default=["ar", "chain:3", "eagle", "eagle2"])
    ap.add_argument("--head", default=None, help="head file (default: the shipped one)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    pipe = adaeagle_ext.load(dtype=args.dtype, threads=args.threads, progress=False)
    prompts = spec_bench_prompts(args.per_category)
    ids = [pipe.encode(text, chat=True) for _, text in prompts]
    generate_ids(pipe.model, ids[:1], max_new_tokens=4)  # warm-up
    acc = {m: dict(tok_s=[], dec_tok_s=[], tau=[], draft_s=0.0, verify_s=0.0, total_s=0.0,
                   same=0) for m in args.methods}
    reference: dict[int, list[int]] = {}
    # Methods interleaved per prompt, so a load change on the shared machine hits all alike.
    for i, prompt in enumerate(ids):
        for method in args.methods:
            (out,), st = generate_ids(pipe.model, [prompt], method=make(method, args.head),
                                      max_new_tokens=args.max_new_tokens)
            a = acc[method]
            a["tok_s"].append(st.tokens_per_s)
            a["dec_tok_s"].append((st.new_tokens - 1) / st.decode_s if st.decode_s else 0.0)
            a["tau"].append(st.mean_accepted)
            a["draft_s"] += st.draft_s
            a["verify_s"] += st.verify_s
            a["total_s"] += st.decode_s
            reference.setdefault(i, out.token_ids)
            a["same"] += reference[i] == out.token_ids

    def mean(v):
        return sum(v) / len(v)

    rows = {m: dict(tokens_per_s=mean(a["tok_s"]), decode_tokens_per_s=mean(a["dec_tok_s"]),
                    tau=mean(a["tau"]), draft_share=a["draft_s"] / a["total_s"],
                    verify_share=a["verify_s"] / a["total_s"], identical=f"{a['same']}/{len(ids)}")
            for m, a in acc.items()}
    base = rows.get("ar", {}).get("tokens_per_s")
    base_dec = rows.get("ar", {}).get("decode_tokens_per_s")
    print(f"{len(ids)} Spec-Bench prompts ({', '.join(c for c, _ in prompts)}), "
          f"{args.max_new_tokens} new tokens, {args.dtype}, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| method | tokens/s (with prefill) | speedup | decode tokens/s | decode speedup | τ "
          "| draft share of decode | verify share | same as first method |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        sp = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        dsp = f"{r['decode_tokens_per_s'] / base_dec:.2f}x" if base_dec else "-"
        print(f"| {m} | {r['tokens_per_s']:.1f} | {sp} | {r['decode_tokens_per_s']:.1f} | {dsp} "
              f"| {r['tau']:.2f} | {r['draft_share']:.0%} | {r['verify_share']:.0%} "
              f"| {r['identical']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
