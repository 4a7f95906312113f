"""Builds an ADED tri-gram table from corpus files with the target's tokenizer, and its card.

    python -m adaeagle_ext.train.build_trigram --tokenizer MODEL.gguf|TOKENIZER_DIR \\
        [--data-root DIR] [--out trigram.bin] [--card trigram.md] [FILE ...]

With no FILE, the permissively licensed training files under ``--data-root`` are used
(``PERMISSIVE_SOURCES``): that is how the shipped default table is made.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from adaeagle_ext.drafters.trigram import DEFAULT_TOP_K, build_trigram_table

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train"
DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-instruct"
               / "trigram.bin")

# (path under the data root, licence) of the files the shipped table is built from. Alpaca
# (CC BY-NC), alpaca-gpt4 and the Alpaca seed tasks (CC BY-NC) and NQ (CC BY-SA) are left out.
PERMISSIVE_SOURCES = [
    ("gpteacher/codegen-instruct.json", "MIT (teknium1/GPTeacher)"),
    ("gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "MIT (teknium1/GPTeacher)"),
    ("gsm8k/train.jsonl", "MIT (openai/grade-school-math)"),
    ("openassistant/en_100_tree.jsonl", "Apache-2.0 (LAION-AI/Open-Assistant)"),
    ("openassistant/en_100_text.jsonl", "Apache-2.0 (LAION-AI/Open-Assistant)"),
    ("openassistant/prompt_lottery_en_250_text.jsonl", "Apache-2.0 (LAION-AI/Open-Assistant)"),
    ("code_alpaca/code_alpaca_2k.json",
     "Apache-2.0 repository (sahil280114/codealpaca; OpenAI-generated data)"),
    *((f"t0_cnn_dailymail/cnn_dailymail_3_0_0_{name}.jsonl",
       "Apache-2.0 (CNN/DailyMail HF card; articles (c) CNN/Daily Mail, research use)")
      for name in ("2_or_3_sentences", "generate_story", "news_card_view", "news_stock",
                   "news_summary", "spice_up_story", "sum_in_brief", "tldr_summary",
                   "write_an_outline")),
    ("wmt21_de-en/newstest2021.de-en.jsonl",
     "WMT21 news test set, released for research use (no licence file)"),
]


def load_tokenizer(spec: str):
    """An HF tokenizer from a GGUF file (its metadata) or from a tokenizer folder/name."""
    from transformers import AutoTokenizer

    path = Path(spec)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(spec)


def write_card(card: Path, table, files: list[tuple[Path, str]], out: Path, seconds: float,
               command: str, tokenizer_spec: str) -> None:
    lines = [
        "# ADED tri-gram table: SmolLM2-135M-Instruct tokenizer",
        "",
        "Training-free drafter table for `AdedDrafter` (arXiv 2407.12021): for every bigram of",
        f"the corpus, its top {table.top_k} successors with their probability over the whole",
        "row (count / row total, no renormalisation after pruning). Format: "
        "`adaeagle_ext/drafters/trigram.py`.",
        "",
        f"- Tokenizer: `{Path(tokenizer_spec).name}` (vocabulary {table.vocab_size})",
        f"- Tokens counted: {table.num_tokens:,} (exact duplicate texts dropped; tri-grams never "
        "span two texts)",
        f"- Keys (bigrams): {table.num_keys:,}; entries: {table.num_entries:,}",
        f"- File: `{out.name}`, {out.stat().st_size / 2**20:.1f} MiB",
        f"- Build time: {seconds:.1f} s on this machine (tokenizing + counting + writing)",
        f"- Command: `{command}`",
        "",
        "## Sources and licences",
        "",
        "The table is a statistic of these texts and is shared under their terms; the files are",
        "described in `shared/data/train/README.md`. No evaluation file (Spec-Bench, MT-bench)",
        "was used.",
        "",
        "| file | licence |",
        "|---|---|",
        *(f"| `{p.parent.name}/{p.name}` | {licence} |" for p, licence in files),
        "",
    ]
    card.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="corpus files (.jsonl, .json or text)")
    parser.add_argument("--tokenizer", required=True, help="a .gguf file or a tokenizer folder")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--card", default=None, help="card path (default: OUT with .md)")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument("--min-count", type=int, default=1)
    args = parser.parse_args(argv)

    if args.files:
        files = [(Path(f), "as given") for f in args.files]
    else:
        files = [(Path(args.data_root) / rel, licence) for rel, licence in PERMISSIVE_SOURCES]
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    out = Path(args.out)
    table = build_trigram_table([p for p, _ in files], tokenizer, out, top_k=args.top_k,
                                min_count=args.min_count)
    seconds = time.perf_counter() - start
    command = "python -m adaeagle_ext.train.build_trigram " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    card = Path(args.card) if args.card else out.with_suffix(".md")
    write_card(card, table, files, out, seconds, command, args.tokenizer)
    print(f"{out}: {table.num_tokens:,} tokens, {table.num_keys:,} keys, "
          f"{table.num_entries:,} entries, {out.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
