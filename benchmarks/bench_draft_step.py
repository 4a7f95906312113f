"""Cost of drafting on the default model: one EAGLE-head forward, and one decode step.

    PYTHONPATH=. python benchmarks/bench_draft_step.py [--threads 2] [--reps 7] \\
        [--prompts 2] [--max-new-tokens 48] [--json out.json]

Part 1, head forward: M new draft nodes (M = 1, 6, 20) over a 256-row draft cache, split into
the layer (``forward_tree``) and the draft logits (``logits``, 16k-row draft vocabulary).
``params`` runs the head's float parameters (F.linear, dense LM-head rows); ``packed`` its
packed inference copy (``ops.linear``). The two alternate call by call, so a load change on
the shared machine hits both alike; medians over ``--reps`` rounds of 10 calls.

Part 2, decode step: ``ar``, ``chain:3`` and ``eagle2`` (batch 1, greedy, fp32, EOS off) on the
first ``--prompts`` Spec-Bench prompts, methods interleaved per prompt and repeated ``--reps``
times; per target step the median draft ms (propose + observe), verify ms (tree inputs,
target forward, verify, KV compaction) and whole decode ms, plus τ. Every method's tokens are
checked against ``ar``'s. ``--head-impl params`` drafts on the parameters instead.

Wall times on a loaded shared machine include time the process waited for a core (with two
threads, a parallel region waits for its slower thread). So both parts also report process
CPU ms (``time.process_time``): at ``--threads 1`` that is the work done, unaffected by
waiting; at 2 threads it also counts OpenMP spinning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import machine_info  # noqa: E402
from eagle_tau import spec_bench_prompts  # noqa: E402

import adaeagle_ext  # noqa: E402
from adaeagle_ext.models.tree_inputs import chain_inputs  # noqa: E402
from adaeagle_ext.spec.eagle_base import resolve_head  # noqa: E402
from adaeagle_ext.spec.generate import generate_ids  # noqa: E402

PREFIX = 256
NODE_COUNTS = (1, 6, 20)
METHODS = ("ar", "chain:3", "eagle2")


def head_forward_ms(head, reps: int) -> dict:
    """{impl: {M: {"layer": ms, "logits": ms, "total": ms}}} (medians)."""
    hidden = head.config.hidden_size
    g = torch.Generator().manual_seed(0)
    cache = head.new_cache(1, PREFIX + 64)
    zero = torch.zeros(1, dtype=torch.int32)
    pos, indptr, bits = chain_inputs(torch.tensor([64]), zero)
    with torch.no_grad():
        for start in range(0, PREFIX, 64):  # fill the draft cache
            s = torch.tensor([start], dtype=torch.int32)
            head.forward_tree(torch.randint(0, 1000, (64,), generator=g),
                              torch.randn(64, hidden, generator=g), pos + start, cache, s,
                              indptr, bits)
    prefix = torch.tensor([PREFIX], dtype=torch.int32)
    times: dict = {impl: {m: {"layer": [], "logits": [], "cpu": []} for m in NODE_COUNTS}
                   for impl in ("params", "packed")}
    for m in NODE_COUNTS:
        toks = torch.randint(0, 1000, (m,), generator=g)
        feats = torch.randn(m, hidden, generator=g)
        m_pos, m_ptr, m_bits = chain_inputs(torch.tensor([m]), prefix)
        for _ in range(reps):
            for impl in ("params", "packed"):
                head.packed_inference = impl == "packed"
                with torch.no_grad():
                    for i in range(12):  # 2 warm-up calls, then 10 timed
                        c0 = time.process_time()
                        t0 = time.perf_counter()
                        out = head.forward_tree(toks, feats, m_pos, cache, prefix, m_ptr, m_bits)
                        t1 = time.perf_counter()
                        head.logits(out)
                        t2 = time.perf_counter()
                        c2 = time.process_time()
                        if i >= 2:
                            times[impl][m]["layer"].append(t1 - t0)
                            times[impl][m]["logits"].append(t2 - t1)
                            times[impl][m]["cpu"].append(c2 - c0)
    head.packed_inference = True
    out: dict = {}
    for impl, by_m in times.items():
        out[impl] = {}
        for m, t in by_m.items():
            layer, logits = statistics.median(t["layer"]), statistics.median(t["logits"])
            out[impl][m] = {"layer": layer * 1e3, "logits": logits * 1e3,
                            "total": (layer + logits) * 1e3,
                            "cpu": statistics.median(t["cpu"]) * 1e3}
    return out


def decode_step_ms(model, prompts, reps: int, max_new_tokens: int) -> dict:
    """{method: {"draft": ms, "verify": ms, "step": ms, "tau": τ, "same": "k/n"}} (medians
    over prompts x reps of the per-step means)."""
    acc = {m: {"draft": [], "verify": [], "step": [], "cpu": [], "tau": [], "same": 0,
               "runs": 0} for m in METHODS}
    reference: dict[int, list[int]] = {}
    generate_ids(model, prompts[:1], method="chain:3", max_new_tokens=4)  # warm-up
    for _ in range(reps):
        for i, prompt in enumerate(prompts):
            for method in METHODS:
                c0 = time.process_time()
                (out,), st = generate_ids(model, [prompt], method=method,
                                          max_new_tokens=max_new_tokens)
                cpu = time.process_time() - c0
                a = acc[method]
                steps = max(st.decode_steps, 1)
                a["draft"].append(st.draft_s / steps * 1e3)
                a["verify"].append(st.verify_s / steps * 1e3)
                a["step"].append(st.decode_s / steps * 1e3)
                # CPU of the whole call, prefill included, less the prefill's wall share
                a["cpu"].append(cpu * st.decode_s / max(st.total_s, 1e-9) / steps * 1e3)
                a["tau"].append(st.mean_accepted)
                reference.setdefault(i, out.token_ids)
                a["same"] += reference[i] == out.token_ids
                a["runs"] += 1
    return {m: {k: statistics.median(a[k]) for k in ("draft", "verify", "step", "cpu", "tau")}
            | {"same": f"{a['same']}/{a['runs']}"} for m, a in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=2, help="Spec-Bench prompts (1 per task)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--head-impl", choices=("packed", "params"), default="packed",
                    help="how the head drafts in part 2")
    ap.add_argument("--skip-head", action="store_true", help="skip part 1")
    ap.add_argument("--skip-decode", action="store_true", help="skip part 2")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    pipe = adaeagle_ext.load(threads=args.threads, progress=False)
    head = resolve_head(None, pipe.model)
    info = machine_info()
    print(f"machine: {info}")
    result: dict = {"machine": info, "args": vars(args)}
    if not args.skip_head:
        fwd = head_forward_ms(head, args.reps)
        result["head_forward_ms"] = fwd
        print(f"\nhead forward over a {PREFIX}-row draft cache, {args.threads} threads "
              f"(median ms; layer = forward_tree, logits = {head.config.draft_vocab_size} "
              "draft-vocab rows)\n")
        print("| M | params layer | params logits | params total | params CPU | packed layer "
              "| packed logits | packed total | packed CPU | speed-up (wall) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in NODE_COUNTS:
            p, q = fwd["params"][m], fwd["packed"][m]
            print(f"| {m} | {p['layer']:.2f} | {p['logits']:.2f} | {p['total']:.2f} "
                  f"| {p['cpu']:.2f} | {q['layer']:.2f} | {q['logits']:.2f} | {q['total']:.2f} "
                  f"| {q['cpu']:.2f} | {p['total'] / q['total']:.1f}x |", flush=True)
    if not args.skip_decode:
        head.packed_inference = args.head_impl == "packed"
        prompts = [pipe.encode(text, chat=True)
                   for _, text in spec_bench_prompts(1)][:args.prompts]
        dec = decode_step_ms(pipe.model, prompts, args.reps, args.max_new_tokens)
        head.packed_inference = True
        result["decode_step_ms"] = dec
        print(f"\ndecode step, {len(prompts)} prompts x {args.reps} reps, {args.max_new_tokens} "
              f"new tokens, greedy, fp32, head {args.head_impl} (median ms per target step)\n")
        print("| method | draft | verify | whole step | step CPU | τ | same tokens as ar |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for m, r in dec.items():
            print(f"| {m} | {r['draft']:.1f} | {r['verify']:.1f} | {r['step']:.1f} "
                  f"| {r['cpu']:.1f} | {r['tau']:.2f} | {r['same']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
