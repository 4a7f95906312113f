"""Tri-gram tables for the ADED drafter: counting, pruning, and the binary file format.

A table maps a bigram key ``(t1, t2)`` to its successors ``t3`` with their probabilities
``count(t1, t2, t3) / count(t1, t2, *)``, computed over the whole row and then pruned to the
``top_k`` most probable successors (no renormalisation, as in ADED). Rows are stored in CSR form:

    keys     int64 [K]    ``t1 << 32 | t2``, strictly ascending
    offsets  int32 [K+1]  row k owns entries ``[offsets[k], offsets[k+1])``
    succ     int32 [E]    successor token ids, by probability descending then id ascending
    probs    float32 [E]

File layout (little-endian), version 1: a 48-byte header
``magic b"ADTG", version u32, vocab_size u32, top_k u32, num_keys u64, num_entries u64,
num_tokens u64, crc32 u32 (of everything after the header), reserved u32``, then the four arrays
above in that order, back to back. Loading memory-maps them (copy-on-write).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"ADTG"
VERSION = 1
HEADER = struct.Struct("<4sIIIQQQII")
DEFAULT_TOP_K = 12
# Tri-grams are counted as one uint64 key of three 21-bit ids.
MAX_COUNT_VOCAB = 1 << 21

# Keys of JSON records that hold text; other keys (ids, names, roles, flags) are skipped.
TEXT_KEYS = ("instruction", "input", "output", "response", "prompt", "completion", "question",
             "answer", "text", "content", "de", "en")
# Training prompts that are also evaluation prompts (see shared/data/train/README.md).
EVAL_OVERLAP = frozenset({"Prove the Pythagorean Theorem."})
EVAL_DIRS = frozenset({"spec_bench", "mt_bench"})


class TrigramFileError(ValueError):
    """A tri-gram file that is missing, truncated, corrupt, of another version or vocabulary."""


def pack_bigram(t1, t2):
    """The row key of bigram (t1, t2): ``t1 << 32 | t2`` (ints or int64 arrays)."""
    return (np.asarray(t1, dtype=np.int64) << 32) | np.asarray(t2, dtype=np.int64)


@dataclass
class TrigramTable:
    """A pruned tri-gram table in CSR form (see the module docstring for the arrays)."""

    keys: np.ndarray
    offsets: np.ndarray
    succ: np.ndarray
    probs: np.ndarray
    vocab_size: int
    top_k: int = DEFAULT_TOP_K
    num_tokens: int = 0

    @classmethod
    def empty(cls, vocab_size: int, top_k: int = DEFAULT_TOP_K) -> TrigramTable:
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.float32), vocab_size, top_k)

    @property
    def num_keys(self) -> int:
        return int(self.keys.shape[0])

    @property
    def num_entries(self) -> int:
        return int(self.succ.shape[0])

    def row(self, t1: int, t2: int) -> tuple[np.ndarray, np.ndarray]:
        """Successors (int32) and probabilities (float32) of bigram (t1, t2); empty if unseen."""
        key = int(pack_bigram(t1, t2))
        k = int(np.searchsorted(self.keys, key))
        if k == self.num_keys or int(self.keys[k]) != key:
            return self.succ[:0], self.probs[:0]
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return self.succ[lo:hi], self.probs[lo:hi]

    def prob(self, t1: int, t2: int, t3: int) -> float:
        """Stored probability of t3 after (t1, t2), 0.0 when pruned or unseen."""
        succ, probs = self.row(t1, t2)
        hit = np.flatnonzero(succ == t3)
        return float(probs[hit[0]]) if hit.size else 0.0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys int64 [K], offsets int32 [K+1], succ int32 [E], probs float32 [E]) sharing
        memory with the arrays (no copy), as ``aded_draft`` takes them."""
        return tuple(torch.from_numpy(a) for a in (self.keys, self.offsets, self.succ, self.probs))

    def save(self, path: str | Path) -> None:
        """Writes the table in the binary format of the module docstring."""
        arrays = self._file_arrays()
        crc = 0
        for a in arrays:
            crc = zlib.crc32(a.data, crc)
        header = HEADER.pack(MAGIC, VERSION, self.vocab_size, self.top_k, self.num_keys,
                             self.num_entries, self.num_tokens, crc, 0)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(header)
            for a in arrays:
                f.write(a.data)
        tmp.replace(path)

    def _file_arrays(self) -> list[np.ndarray]:
        if self.num_entries >= 1 << 31:
            raise ValueError(f"a tri-gram table holds at most 2^31-1 entries, "
                             f"got {self.num_entries}")
        return [np.ascontiguousarray(self.keys, "<i8"), np.ascontiguousarray(self.offsets, "<i4"),
                np.ascontiguousarray(self.succ, "<i4"), np.ascontiguousarray(self.probs, "<f4")]

    @classmethod
    def load(cls, path: str | Path, vocab_size: int | None = None,
             verify: bool = True) -> TrigramTable:
        """Memory-maps a table file. Raises TrigramFileError naming the file when it is missing,
        truncated, corrupt (bad magic, checksum or arrays), of another format version, or built
        for another vocabulary size than ``vocab_size`` (when given)."""
        path = Path(path)
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(HEADER.size)
        except OSError as exc:
            raise TrigramFileError(f"cannot read tri-gram table {path}: {exc}") from exc
        if len(head) < HEADER.size:
            raise TrigramFileError(f"tri-gram table {path} is truncated: {size} bytes, "
                                   f"shorter than its {HEADER.size}-byte header")
        magic, version, vocab, top_k, nkeys, nentries, ntokens, crc, _ = HEADER.unpack(head)
        if magic != MAGIC:
            raise TrigramFileError(f"{path} is not a tri-gram table (magic {magic!r}, "
                                   f"expected {MAGIC!r})")
        if version != VERSION:
            raise TrigramFileError(f"tri-gram table {path} has format version {version}; this "
                                   f"adaeagle_ext reads version {VERSION}: rebuild it")
        if vocab_size is not None and vocab != vocab_size:
            raise TrigramFileError(f"tri-gram table {path} was built for a vocabulary of {vocab} "
                                   f"tokens, but the tokenizer has {vocab_size}")
        layout = list(zip([nkeys, nkeys + 1, nentries, nentries], ["<i8", "<i4", "<i4", "<f4"],
                          strict=True))
        expected = HEADER.size + sum(n * np.dtype(d).itemsize for n, d in layout)
        if size != expected:
            raise TrigramFileError(f"tri-gram table {path} is truncated or corrupt: {size} "
                                   f"bytes, its header ({nkeys} keys, {nentries} entries) "
                                   f"needs {expected}")
        arrays, offset = [], HEADER.size
        for n, d in layout:
            arrays.append(np.memmap(path, dtype=d, mode="c", offset=offset, shape=(n,))
                          if n else np.zeros(0, d))
            offset += n * np.dtype(d).itemsize
        table = cls(*arrays, vocab_size=vocab, top_k=top_k, num_tokens=ntokens)
        if verify:
            table._verify(path, crc)
        return table

    def _verify(self, path: Path, crc: int) -> None:
        got = 0
        for a in (self.keys, self.offsets, self.succ, self.probs):
            got = zlib.crc32(memoryview(a).cast("B"), got)
        if got != crc:
            raise TrigramFileError(f"tri-gram table {path} is corrupt: checksum {got:#010x}, "
                                   f"header says {crc:#010x}")
        problems = []
        if self.offsets[0] != 0 or self.offsets[-1] != self.num_entries:
            problems.append("offsets do not span the entries")
        if np.any(np.diff(self.offsets) < 0) or np.any(np.diff(self.offsets) > self.top_k):
            problems.append(f"a row is negative or longer than top_k={self.top_k}")
        if np.any(np.diff(self.keys) <= 0):
            problems.append("keys are not strictly ascending")
        if self.num_entries and (self.succ.min() < 0 or self.succ.max() >= self.vocab_size):
            problems.append(f"a successor id is outside [0, {self.vocab_size})")
        if problems:
            raise TrigramFileError(f"tri-gram table {path} is corrupt: {'; '.join(problems)}")


def count_trigrams(sequences: Iterable[Sequence[int] | np.ndarray], vocab_size: int,
                   top_k: int = DEFAULT_TOP_K, min_count: int = 1) -> TrigramTable:
    """Counts the tri-grams inside each token sequence (none across sequences) into a table.

    Args:
        sequences: token-id sequences (lists or integer arrays), each a separate document.
        vocab_size: ids must lie in ``[0, vocab_size)``, at most 2^21.
        top_k: successors kept per row (the most probable, ties by smaller id).
        min_count: tri-grams seen fewer times are dropped after the row totals are taken.

    Returns:
        TrigramTable with probabilities over the full row (before pruning).
    """
    if not 0 < vocab_size <= MAX_COUNT_VOCAB:
        raise ValueError(f"vocab_size must be in [1, {MAX_COUNT_VOCAB}], got {vocab_size}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    chunks, num_tokens = [], 0
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64)
        num_tokens += ids.size
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = ids[(ids < 0) | (ids >= vocab_size)][0]
            raise ValueError(f"token id {bad} is outside [0, {vocab_size})")
        if ids.size >= 3:
            chunks.append((ids[:-2] << 42) | (ids[1:-1] << 21) | ids[2:])
    if not chunks:
        table = TrigramTable.empty(vocab_size, top_k)
        table.num_tokens = num_tokens
        return table
    tri, counts = np.unique(np.concatenate(chunks), return_counts=True)
    bigram = tri >> 21
    row_start = np.flatnonzero(np.r_[True, bigram[1:] != bigram[:-1]])
    row_of = np.repeat(np.arange(row_start.size), np.diff(np.r_[row_start, tri.size]))
    totals = np.add.reduceat(counts, row_start)
    probs = (counts / totals[row_of]).astype(np.float32)
    succ = (tri & (MAX_COUNT_VOCAB - 1)).astype(np.int32)
    order = np.lexsort((succ, -counts, row_of))  # rows stay in key order
    rank = np.arange(tri.size) - row_start[row_of[order]]
    keep = order[(rank < top_k) & (counts[order] >= min_count)]
    kept_rows, row_len = np.unique(row_of[keep], return_counts=True)
    t1 = (bigram[row_start[kept_rows]] >> 21).astype(np.int64)
    t2 = (bigram[row_start[kept_rows]] & (MAX_COUNT_VOCAB - 1)).astype(np.int64)
    return TrigramTable(
        keys=pack_bigram(t1, t2),
        offsets=np.r_[0, np.cumsum(row_len)].astype(np.int32),
        succ=succ[keep],
        probs=probs[keep],
        vocab_size=vocab_size,
        top_k=top_k,
        num_tokens=num_tokens,
    )


# ---------------------------------------------------------------------------------------------
# corpus reading and tokenizing


def _record_texts(record) -> Iterator[str]:
    """Text fields of one JSON record, recursing into nested lists and dicts (OpenAssistant
    reply trees, Alpaca seed-task instances); a bare string is itself the text."""
    if isinstance(record, str):
        yield record
    elif isinstance(record, list):
        for item in record:
            yield from _record_texts(item)
    elif isinstance(record, dict):
        for key, value in record.items():
            if key in TEXT_KEYS and isinstance(value, str):
                yield value
            elif key in TEXT_KEYS and isinstance(value, list) and all(
                    isinstance(v, str) for v in value):
                yield from value
            elif isinstance(value, (list, dict)):
                yield from _record_texts(value)


def _is_eval_overlap(record) -> bool:
    return isinstance(record, dict) and any(
        isinstance(v, str) and v.strip() in EVAL_OVERLAP for v in record.values())


def read_texts(path: str | Path, chunk_chars: int = 1 << 16) -> Iterator[str]:
    """The texts of one corpus file, each a separate document.

    ``.jsonl``: one JSON value per line; ``.json``: a list of records (or one record). Records
    yield their text fields (``TEXT_KEYS``), nested replies included; records that repeat an
    evaluation prompt (``EVAL_OVERLAP``) are skipped. Any other file is plain text, split at
    line ends into documents of about ``chunk_chars`` characters.
    """
    path = Path(path)
    if EVAL_DIRS & set(path.resolve().parts):
        raise ValueError(f"{path} is an evaluation file: never build tables from it")
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                records = (json.loads(line) for line in f if line.strip())
            else:
                data = json.load(f)
                records = data if isinstance(data, list) else [data]
            for record in records:
                if not _is_eval_overlap(record):
                    yield from (t for t in _record_texts(record) if t.strip())
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        buf: list[str] = []
        size = 0
        for line in f:
            buf.append(line)
            size += len(line)
            if size >= chunk_chars:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


def _encode_batch(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A batch encoder for an HF tokenizer (batched, no special tokens), a `tokenizers`
    Tokenizer, or any callable ``encode(text) -> list[int]``."""
    if hasattr(tokenizer, "batch_decode") and callable(tokenizer):
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    if hasattr(tokenizer, "encode_batch"):
        return lambda texts: [e.ids for e in tokenizer.encode_batch(texts,
                                                                    add_special_tokens=False)]
    if callable(tokenizer):
        return lambda texts: [tokenizer(t) for t in texts]
    raise TypeError("tokenizer must be an HF tokenizer or a callable encode(text) -> list[int]")


def tokenize_files(paths: Iterable[str | Path], tokenizer, batch: int = 512,
                   dedup: bool = True) -> Iterator[np.ndarray]:
    """Token-id arrays (int64) of every document of the files, exact duplicates dropped."""
    encode = _encode_batch(tokenizer)
    seen: set[int] = set()
    pending: list[str] = []
    for path in paths:
        for text in read_texts(path):
            if dedup:
                h = hash(text)
                if h in seen:
                    continue
                seen.add(h)
            pending.append(text)
            if len(pending) >= batch:
                yield from (np.asarray(ids, np.int64) for ids in encode(pending))
                pending = []
    if pending:
        yield from (np.asarray(ids, np.int64) for ids in encode(pending))


def build_trigram_table(paths: Sequence[str | Path] | str | Path, tokenizer,
                        out_path: str | Path | None = None, *, vocab_size: int | None = None,
                        top_k: int = DEFAULT_TOP_K, min_count: int = 1,
                        extra: Sequence[Sequence[int]] = (), extra_weight: int = 1
                        ) -> TrigramTable:
    """Tokenizes corpus files (see ``read_texts``) and counts their tri-grams into a table.

    Args:
        paths: corpus files (.jsonl, .json or plain text), or a single path.
        tokenizer: an HF tokenizer or a callable ``encode(text) -> list[int]``.
        out_path: where to save the table file (optional).
        vocab_size: defaults to ``len(tokenizer)`` for HF tokenizers, else max id + 1.
        top_k, min_count: as in ``count_trigrams``.
        extra: token-id sequences counted besides the files (e.g. the target's own answers),
            each ``extra_weight`` times.
    """
    if extra_weight < 0:
        raise ValueError(f"extra_weight must be >= 0, got {extra_weight}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"corpus file not found: {p}")
    sequences = list(tokenize_files(paths, tokenizer))
    sequences += [np.asarray(seq, np.int64) for seq in extra] * extra_weight
    if vocab_size is None:
        if hasattr(tokenizer, "batch_decode"):
            vocab_size = len(tokenizer)
        else:
            vocab_size = 1 + max((int(s.max()) for s in sequences if s.size), default=0)
    table = count_trigrams(sequences, vocab_size, top_k=top_k, min_count=min_count)
    if out_path is not None:
        table.save(out_path)
    return table
