"""``python -m adaeagle_ext.demo``: fetch the default model, answer a chat prompt streaming,
print the speed."""

from __future__ import annotations

import argparse
import sys

from adaeagle_ext.cli import format_stats

DEFAULT_PROMPT = "Explain in three sentences why the sky is blue."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adaeagle_ext.demo", description=__doc__)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--method", default="ar")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)

    from adaeagle_ext.api import load

    pipe = load(None, dtype=args.dtype, threads=args.threads)
    print(f"> {args.prompt}\n")
    res = pipe.generate(args.prompt, chat=True, method=args.method,
                        max_new_tokens=args.max_new_tokens,
                        stream=lambda _i, text: (sys.stdout.write(text), sys.stdout.flush()))
    print("\n")
    print(format_stats(res.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
