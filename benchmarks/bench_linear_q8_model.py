"""The default model with float activations vs 8-bit activation blocks in every packed layer
(``set_act_quant(model, 8)``): decode step time and how much the numbers move.

- Step time: one forward of 1 and of 16 new tokens after a 64-token prompt (KV cache of 256),
  the two modes alternating call by call, median of many calls.
- Logits: teacher-forced on each prompt plus the 64 tokens greedy ``ar`` generates in float
  mode: max |logit difference| and how often the two modes' argmax agree; then free-running
  greedy ``ar`` in each mode: tokens identical before the first divergence.
Writes benchmarks/results/linear_q8_model.{json,md}.

    python benchmarks/bench_linear_q8_model.py [--threads 2] [--reps 60]
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

from adaeagle_ext import api  # noqa: E402
from adaeagle_ext.models.packed_layers import set_act_quant  # noqa: E402
from adaeagle_ext.models.tree_inputs import chain_inputs  # noqa: E402

PROMPTS = ["Explain why the sky is blue in two sentences.",
           "Write a Python function that returns the n-th Fibonacci number.",
           "What is the capital of Australia, and why is it not Sydney?",
           "List three tips for learning a new language.",
           "Summarise the plot of Romeo and Juliet."]
NEW_TOKENS = 64


def forward(model, tokens: torch.Tensor, prefix: int, cache) -> torch.Tensor:
    """Logits [T, V] of a chain of new tokens after ``prefix`` cached ones (64 at a time)."""
    out = []
    for start in range(0, tokens.numel(), 64):
        chunk = tokens[start:start + 64]
        lens = torch.tensor([prefix + start], dtype=torch.int32)
        pos, indptr, mask = chain_inputs(torch.tensor([chunk.numel()]), lens)
        out.append(model(chunk, pos, indptr, mask, lens, cache)[0])
    return torch.cat(out)


def step_times(model, reps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (64,), generator=gen)
    cache = model.new_cache(1, 256)
    forward(model, prompt, 0, cache)
    out = {}
    for t in (1, 16):
        new = torch.randint(0, model.config.vocab_size, (t,), generator=gen)
        times: dict[int, list[float]] = {0: [], 8: []}
        for i in range(reps + 3):
            for mode in (0, 8):
                set_act_quant(model, mode)
                t0 = time.perf_counter()
                forward(model, new, 64, cache)  # rewrites the same cache rows every call
                if i >= 3:
                    times[mode].append(time.perf_counter() - t0)
        for mode, ts in times.items():
            out[f"T={t} {'q8' if mode else 'fp32'}_ms"] = statistics.median(ts) * 1e3
    set_act_quant(model, 0)
    return out


def logit_agreement(pipe) -> list[dict]:
    model = pipe.model
    rows = []
    for prompt in PROMPTS:
        ids = pipe.encode(prompt, chat=True)
        set_act_quant(model, 0)
        ref_gen = pipe.generate(ids, max_new_tokens=NEW_TOKENS, eos=False).token_ids
        seq = torch.tensor(ids + ref_gen)
        logits = {}
        for mode in (0, 8):
            set_act_quant(model, mode)
            logits[mode] = forward(model, seq, 0, model.new_cache(1, seq.numel()))[len(ids) - 1:-1]
        q8_gen = pipe.generate(ids, max_new_tokens=NEW_TOKENS, eos=False).token_ids
        set_act_quant(model, 0)
        same = next((i for i, (a, b) in enumerate(zip(ref_gen, q8_gen, strict=True)) if a != b),
                    len(ref_gen))
        rows.append({
            "prompt": prompt, "prompt_tokens": len(ids),
            "max_abs_logit_diff": (logits[0] - logits[8]).abs().max().item(),
            "max_abs_logit": logits[0].abs().max().item(),
            "argmax_agree": (logits[0].argmax(-1) == logits[8].argmax(-1)).float().mean().item(),
            "free_run_identical_prefix": same})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--out", default=str(HERE / "results" / "linear_q8_model"))
    args = parser.parse_args()
    pipe = api.load(threads=args.threads, progress=False)
    steps = step_times(pipe.model, args.reps)
    print(steps, flush=True)
    agreement = logit_agreement(pipe)
    write(steps, agreement, args)


def write(steps: dict, agreement: list[dict], args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "steps": steps, "agreement": agreement}, indent=1))
    lines = ["# Default model: float activations vs 8-bit activation blocks (act_quant=8)", "",
             f"Command: `python benchmarks/bench_linear_q8_model.py --threads {args.threads} "
             f"--reps {args.reps}`", "",
             f"Machine: {', '.join(f'{k}={v}' for k, v in info.items())}", "",
             "## Decode step (one forward after a 64-token prompt; modes alternating)", "",
             "| new tokens | fp32 act (ms) | q8 act (ms) | speed-up |", "|---:|---:|---:|---:|"]
    for t in (1, 16):
        a, b = steps[f"T={t} fp32_ms"], steps[f"T={t} q8_ms"]
        lines.append(f"| {t} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    lines += ["", f"## Logits over {NEW_TOKENS} greedy `ar` tokens (chat prompts)", "",
              "Teacher-forced on the float mode's greedy continuation: max |logit diff| (next to "
              "the largest |logit|) and argmax agreement; free-running: tokens identical before "
              "the two modes' greedy outputs first differ.", "",
              "| prompt | max abs diff | max abs logit | argmax agree | identical prefix |",
              "|---|---:|---:|---:|---:|"]
    for r in agreement:
        lines.append(f"| {r['prompt']} | {r['max_abs_logit_diff']:.3f} | {r['max_abs_logit']:.1f} "
                     f"| {r['argmax_agree']:.1%} | {r['free_run_identical_prefix']}/{NEW_TOKENS} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
