"""Builds an ADED tri-gram table from corpus files with the target's tokenizer, and its card.

    python -m adaeagle_ext.train.build_trigram --tokenizer MODEL.gguf|TOKENIZER_DIR \\
        [--data-root DIR] [--out trigram.bin] [--card trigram.md] \\
        [--own-answers N [--own-weight W] [--answers FILE]] [FILE ...]

With no FILE, the permissively licensed training files under ``--data-root`` are used
(``PERMISSIVE_SOURCES``). ``--own-answers N`` also counts the default model's own greedy
answers (bf16) to N of those files' prompts (evaluation prompts excluded), each ``--own-weight``
times: the drafts then follow how the target itself phrases things. The answers are saved to
``--answers`` (default under ``$ADAEAGLE_HOME/trigram/``) every 64 prompts, and a rerun resumes
from them. The shipped default table counts the corpus only; its card gives the command and what
the own answers measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from adaeagle_ext.drafters.trigram import DEFAULT_TOP_K, build_trigram_table
from adaeagle_ext.models.fetch import adaeagle_home

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "train"
DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-instruct"
               / "trigram.bin")

# Times each of the target's own answers is counted against the corpus (--own-weight).
DEFAULT_OWN_WEIGHT = 32

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


def own_answers(count: int, seed: int, max_new_tokens: int, data_root: Path,
                answers: Path) -> list:
    """The default model's greedy answers (bf16) to ``count`` training prompts of
    ``PERMISSIVE_SOURCES`` drawn with ``seed`` (evaluation prompts dropped), as TokenisedChat;
    read from ``answers`` when it holds them, else generated (resumable) and saved there.

    The settings that made a saved file are kept beside it (``answers_settings(answers)``); a
    file made with other settings is refused rather than silently counted."""
    from adaeagle_ext.api import load
    from adaeagle_ext.train.conversations import evaluation_prompts, training_mix
    from adaeagle_ext.train.features import distill_resumable, load_chats, save_chats, tokenise

    settings = {"count": count, "seed": seed, "max_new_tokens": max_new_tokens,
                "data_root": str(Path(data_root).resolve())}
    sidecar = answers_settings(answers)
    if answers.is_file():
        chats = load_chats(answers)
        saved = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        if saved is not None and saved != settings:
            raise SystemExit(f"error: {answers} was made with {saved}, not {settings}; remove "
                             "it or pass another --answers")
        longest = max((len(c.response) for c in chats), default=0)
        if len(chats) > count or longest > max_new_tokens:
            raise SystemExit(f"error: {answers} holds {len(chats)} answers of up to {longest} "
                             f"tokens, more than --own-answers {count} / "
                             f"--own-max-new-tokens {max_new_tokens} allow")
        print(f"{len(chats)} answers from {answers}"
              + ("" if saved else " (no settings file beside it: not checked against --seed)"))
        return chats
    pipe = load(None, dtype="bfloat16")
    eos = pipe._eos_ids()
    paths = [data_root / rel for rel, _ in PERMISSIVE_SOURCES]
    convs = training_mix(paths, count, seed=seed, exclude=evaluation_prompts(data_root))
    chats = tokenise(convs, pipe.tokenizer, eos[0], 640)
    answers.parent.mkdir(parents=True, exist_ok=True)
    chats = distill_resumable(pipe.model, chats, eos, max_new_tokens,
                              answers.with_suffix(".partial.json"))
    save_chats(chats, answers)
    sidecar.write_text(json.dumps(settings))
    return chats


def answers_settings(answers: Path) -> Path:
    """Where the settings that made an answers file are kept: ``NAME.settings.json``."""
    return answers.with_suffix(".settings.json")


def write_card(card: Path, table, files: list[tuple[Path, str]], out: Path, seconds: float,
               command: str, tokenizer_spec: str, own_note: str | None = None) -> None:
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
        *([f"- Also counted: {own_note}"] if own_note else []),
        f"- Build time: {seconds:.1f} s on this machine (tokenizing + counting + writing"
        + (", answering" if own_note else "") + ")",
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
    parser.add_argument("--own-answers", type=int, default=0,
                        help="also count the default model's answers to this many prompts")
    parser.add_argument("--own-weight", type=int, default=DEFAULT_OWN_WEIGHT,
                        help="times each own answer is counted")
    parser.add_argument("--own-max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=11, help="which training prompts to answer")
    parser.add_argument("--answers", default=None,
                        help="answers file (default: $ADAEAGLE_HOME/trigram/answers_N_sSEED.json)")
    args = parser.parse_args(argv)

    if args.files:
        files = [(Path(f), "as given") for f in args.files]
    else:
        files = [(Path(args.data_root) / rel, licence) for rel, licence in PERMISSIVE_SOURCES]
    if args.own_answers < 0 or args.own_weight < 0:
        parser.error("--own-answers and --own-weight must be >= 0")
    start = time.perf_counter()
    own: list[list[int]] = []
    own_note = None
    if args.own_answers:
        answers = Path(args.answers) if args.answers else (
            adaeagle_home() / "trigram" / f"answers_{args.own_answers}_s{args.seed}.json")
        chats = own_answers(args.own_answers, args.seed, args.own_max_new_tokens,
                            Path(args.data_root), answers)
        # Each answer with the last two prompt tokens, so its first tri-grams have their context.
        own = [c.prompt[-2:] + c.response for c in chats]
        own_note = (f"the default model's own greedy answers (bf16, at most "
                    f"{args.own_max_new_tokens} new tokens) to {len(chats)} prompts of these "
                    f"files (seed {args.seed}), {sum(len(c.response) for c in chats):,} tokens, "
                    f"each counted {args.own_weight} times; prompts saved in `{answers.name}`")
    tokenizer = load_tokenizer(args.tokenizer)
    out = Path(args.out)
    table = build_trigram_table([p for p, _ in files], tokenizer, out, top_k=args.top_k,
                                min_count=args.min_count, extra=own,
                                extra_weight=args.own_weight)
    seconds = time.perf_counter() - start
    command = "python -m adaeagle_ext.train.build_trigram " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    card = Path(args.card) if args.card else out.with_suffix(".md")
    write_card(card, table, files, out, seconds, command, args.tokenizer, own_note)
    print(f"{out}: {table.num_tokens:,} tokens, {table.num_keys:,} keys, "
          f"{table.num_entries:,} entries, {out.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
