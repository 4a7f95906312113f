"""End-to-end decoding speed of this runtime vs HF transformers ``generate``.

    python benchmarks/bench_e2e.py --method ar --dtype float32 bfloat16 --threads 2

Same prompts, weights (the dequantised default model unless --model), dtype and threads for
both; both generate exactly --max-new-tokens tokens (EOS off). Also reports the achieved weight
bandwidth (weight bytes read per decode step x steps/s) against a read bandwidth measured in
this run (a large fp32 tensor streamed through a sum).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

PROMPTS = [
    "Explain what a hash table is.",
    "Write a haiku about the sea.",
    "Give three tips for learning to cook.",
]


def read_bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    """Best-of-N GB/s of ``x.sum()`` over an fp32 tensor of ``mb`` MB."""
    x = torch.ones(mb * (1 << 20) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def weight_bytes_per_step(model) -> int:
    """Bytes of the matrices one decode step reads (all linears + LM head; the embedding
    lookup reads one row, norms are negligible)."""
    total = 0
    for name, p in model.named_parameters():
        if p.ndim == 2 and not (name.endswith("embed_tokens.weight")
                                and not model.config.tie_word_embeddings):
            total += p.numel() * p.element_size()
    return total


def hf_copy(model, dtype):
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**model.config.to_hf_dict()))
    hf.load_state_dict(model.state_dict(), strict=False)
    hf.tie_weights()
    return hf.to(dtype).eval()


def bench_ours(pipe, ids, method, n_new):
    pipe.generate(ids[0], method=method, max_new_tokens=4, eos=False)  # warm-up
    runs = []
    for p in ids:
        res = pipe.generate(p, method=method, max_new_tokens=n_new, eos=False)
        s = res.stats
        runs.append(dict(prompt_tokens=len(p), new_tokens=s.new_tokens, total_s=s.total_s,
                         prefill_s=s.prefill_s, decode_s=s.decode_s,
                         decode_steps=s.decode_steps, forwards=s.forwards,
                         mean_accepted=s.mean_accepted))
    return runs


def bench_hf(hf, ids, n_new):
    with torch.no_grad():
        hf.generate(torch.tensor([ids[0]]), max_new_tokens=4, do_sample=False,
                    eos_token_id=None, pad_token_id=0)
        runs = []
        for p in ids:
            t0 = time.perf_counter()
            out = hf.generate(torch.tensor([p]), max_new_tokens=n_new, min_new_tokens=n_new,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
            dt = time.perf_counter() - t0
            runs.append(dict(prompt_tokens=len(p), new_tokens=out.shape[1] - len(p),
                             total_s=dt, token_ids=out[0, len(p):].tolist()))
    return runs


def summarize(runs):
    new = sum(r["new_tokens"] for r in runs)
    total = sum(r["total_s"] for r in runs)
    out = dict(new_tokens=new, total_s=total, tokens_per_s=new / total)
    if "decode_s" in runs[0]:
        steps = sum(r["decode_steps"] for r in runs)
        out["decode_steps_per_s"] = steps / sum(r["decode_s"] for r in runs)
        out["decode_tokens_per_s"] = sum(r["new_tokens"] - 1 for r in runs) / sum(
            r["decode_s"] for r in runs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--method", default="ar")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    import transformers

    from adaeagle_ext.api import load

    torch.set_num_threads(args.threads)
    bw = read_bandwidth_gbs()
    print(f"read bandwidth: {bw:.1f} GB/s")
    report = dict(
        method=args.method, threads=args.threads, max_new_tokens=args.max_new_tokens,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=torch.get_num_threads()),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      python=platform.python_version()),
        read_bandwidth_gbs=bw, load_average_before=_loadavg(), results={})
    for dtype in args.dtype:
        pipe = load(args.model, dtype=dtype, threads=args.threads, progress=False)
        ids = [pipe.encode(p, chat=True) for p in PROMPTS[: args.prompts]]
        ours = bench_ours(pipe, ids, args.method, args.max_new_tokens)
        entry = dict(ours=summarize(ours), ours_runs=ours)
        step_bytes = weight_bytes_per_step(pipe.model)
        entry["weight_bytes_per_step"] = step_bytes
        entry["achieved_bandwidth_gbs"] = step_bytes * entry["ours"]["decode_steps_per_s"] / 1e9
        entry["bandwidth_fraction"] = entry["achieved_bandwidth_gbs"] / bw
        if not args.no_hf:
            hf_runs = bench_hf(hf_copy(pipe.model, pipe.model.dtype), ids,
                               args.max_new_tokens)
            ours_ids = [pipe.generate(p, max_new_tokens=args.max_new_tokens,
                                      eos=False).token_ids for p in ids]
            entry["hf"] = summarize(hf_runs)
            entry["hf_runs"] = hf_runs
            entry["speedup_vs_hf"] = entry["ours"]["tokens_per_s"] / entry["hf"]["tokens_per_s"]
            entry["same_tokens_as_hf"] = [
                o == h["token_ids"] for o, h in zip(ours_ids, hf_runs, strict=True)]
        report["results"][dtype] = entry
        print(json.dumps({k: v for k, v in entry.items() if not k.endswith("_runs")}, indent=1))
        del pipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"e2e_{args.method}_t{args.threads}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {out / stem}.json and .md")
    return 0


def _loadavg():
    try:
        return [round(x, 2) for x in __import__("os").getloadavg()]
    except OSError:
        return None


def markdown(r) -> str:
    lines = [f"# End-to-end `{r['method']}` decoding", "",
             f"Machine: {r['machine']['platform']} ({r['machine']['processor'] or 'cpu'}), "
             f"{r['threads']} threads; torch {r['versions']['torch']}, transformers "
             f"{r['versions']['transformers']}, Python {r['versions']['python']}.",
             f"Default model (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised), "
             f"{r['max_new_tokens']} new tokens per prompt, chat prompts, EOS off.",
             f"Read bandwidth measured in the same run: {r['read_bandwidth_gbs']:.1f} GB/s. "
             f"Load average before the run: {r.get('load_average_before')} (shared machine: "
             "other jobs were compiling, so absolute numbers are noisy; ratios are side by side).",
             "",
             "| dtype | ours tok/s | ours decode tok/s | HF generate tok/s | ours / HF | "
             "weight MB/step | achieved GB/s | of read BW | same tokens as HF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dtype, e in r["results"].items():
        hf = e.get("hf", {})
        lines.append(
            f"| {dtype} | {e['ours']['tokens_per_s']:.1f} | "
            f"{e['ours']['decode_tokens_per_s']:.1f} | "
            f"{hf.get('tokens_per_s', float('nan')):.1f} | "
            f"{e.get('speedup_vs_hf', float('nan')):.2f} | "
            f"{e['weight_bytes_per_step'] / 1e6:.0f} | "
            f"{e['achieved_bandwidth_gbs']:.2f} | {100 * e['bandwidth_fraction']:.0f}% | "
            f"{sum(e.get('same_tokens_as_hf', [])) }/{len(e.get('same_tokens_as_hf', []))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
