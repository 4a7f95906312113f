"""``adaeagle bench``: arguments and the command (kept light: heavy imports happen on run)."""

from __future__ import annotations

import sys


def add_bench(sub) -> None:
    from adaeagle_ext.bench.prompts import DEFAULT_PROMPTS

    p = sub.add_parser("bench", help="Spec-Bench style benchmark of methods and peers")
    p.add_argument("--model", default=None,
                   help="GGUF file or HF checkpoint dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS),
                   help="JSONL questions, Spec-Bench or simple format (default: Spec-Bench)")
    p.add_argument("--methods", default="ar,hf,hf-pld",
                   help="comma-separated: registered strategies (ar, chain:3, ...; 'all' = "
                        "every registered one) and peers hf, hf-pld[:N], llama_cpp")
    p.add_argument("--limit", type=int, default=None, help="run only the first N questions")
    p.add_argument("--per-category", type=int, default=None,
                   help="N questions per task (stratified, seeded)")
    p.add_argument("--seed", type=int, default=0, help="selection and sampling seed")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="per turn (Spec-Bench uses 1024)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    p.add_argument("--act-quant", type=int, default=0, choices=[0, 8],
                   help="8: 8-bit activation blocks in the packed linear layers (api.load)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed short runs per method before measuring")
    p.add_argument("--out", default="bench_out", help="output directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_bench_command)


def run_bench_command(args) -> int:
    from adaeagle_ext.api import load
    from adaeagle_ext.bench.prompts import load_questions, select
    from adaeagle_ext.bench.report import machine_info, write_report
    from adaeagle_ext.bench.runner import Target, resolve_methods, run_bench

    try:
        methods = resolve_methods(args.methods)
        questions = select(load_questions(args.prompts), args.per_category, args.limit,
                           args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pipe = load(args.model, dtype=args.dtype, threads=args.threads,
                act_quant=args.act_quant, progress=not args.no_progress)
    info = machine_info()  # the code and settings the run starts with
    run = run_bench(Target.from_pipeline(pipe), questions, methods,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    seed=args.seed, warmup=args.warmup, threads=args.threads,
                    progress=not args.no_progress)
    run.settings.update(dtype=args.dtype, act_quant=args.act_quant, prompts=str(args.prompts),
                        model=str(pipe.source),
                        per_category=args.per_category, limit=args.limit,
                        command="adaeagle " + " ".join(sys.argv[1:]))
    md = write_report(run, args.out, info=info)
    print(md.read_text())
    print(f"written to {args.out}/", file=sys.stderr)
    return 0
