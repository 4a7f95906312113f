"""ADED: tri-gram counting and file format, online reinforcement, the MCTS draft search op
against ref.py (exactly: same RNG and arithmetic), tree validity, the drafter, bad input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from adaeagle_ext import ops, ref
from adaeagle_ext.drafters.aded import (
    DEFAULT_TABLE_PATH,
    AdedDrafter,
    OnlineTrigrams,
    load_default_table,
)
from adaeagle_ext.drafters.trigram import (
    HEADER,
    TrigramFileError,
    TrigramTable,
    build_trigram_table,
    count_trigrams,
    pack_bigram,
    read_texts,
)

EMPTY = TrigramTable.empty(8)


def key(t1, t2):
    return int(pack_bigram(t1, t2))


def table_rows(table: TrigramTable) -> dict:
    """{(t1, t2): [(t3, prob)]} of a table, for comparison with ref.trigram_rows."""
    rows = {}
    for k, lo, hi in zip(table.keys.tolist(), table.offsets[:-1].tolist(),
                         table.offsets[1:].tolist(), strict=True):
        rows[(k >> 32, k & 0xFFFFFFFF)] = list(zip(table.succ[lo:hi].tolist(),
                                                   table.probs[lo:hi].tolist(), strict=True))
    return rows


def assert_rows_close(got: dict, expected: dict):
    assert list(got) == list(expected)
    for k in expected:
        assert [t for t, _ in got[k]] == [t for t, _ in expected[k]], k
        np.testing.assert_allclose([p for _, p in got[k]], [p for _, p in expected[k]],
                                   rtol=1e-6)


def random_corpus(rng: np.random.Generator, docs: int, vocab: int) -> list[np.ndarray]:
    """Zipf-distributed documents: a few frequent tri-grams and a long tail."""
    return [rng.zipf(1.4, size=int(rng.integers(1, 80))) % vocab for _ in range(docs)]


def random_overlay(rng: np.random.Generator, table: TrigramTable, vocab: int, size: int):
    """An overlay that reinforces random tri-grams, some of them already in the table."""
    online = OnlineTrigrams(table)
    seq = rng.integers(0, vocab, size=size)
    for start in range(0, size, 16):
        online.reinforce(seq[start:start + 16].tolist())
    return online


# ---------------------------------------------------------------------------------------------
# counting


def test_counts_golden():
    # the second document must not join the first: no (2, 4, 2) or (4, 2, 3)
    table = count_trigrams([[1, 2, 3, 1, 2, 3, 1, 2, 4], [2, 3, 1]], vocab_size=8)
    assert table.keys.tolist() == [key(1, 2), key(2, 3), key(3, 1)]
    assert table.offsets.tolist() == [0, 2, 3, 4]
    assert table.succ.tolist() == [3, 4, 1, 2]
    np.testing.assert_allclose(table.probs, [2 / 3, 1 / 3, 1.0, 1.0], rtol=1e-7)
    assert table.num_tokens == 12
    assert_rows_close(table_rows(table), ref.trigram_rows([[1, 2, 3, 1, 2, 3, 1, 2, 4],
                                                           [2, 3, 1]]))


def test_top12_pruning_keeps_most_frequent_with_full_row_probabilities():
    # after (5, 6): token 10 + i seen i + 1 times, i = 0..14 (120 tri-grams in the row)
    seqs = [[5, 6, 10 + i] for i in range(15) for _ in range(i + 1)]
    table = count_trigrams(seqs, vocab_size=32)
    assert table.offsets.tolist() == [0, 12]
    assert table.succ.tolist() == list(range(24, 12, -1))
    np.testing.assert_allclose(table.probs, np.arange(15, 3, -1) / 120, rtol=1e-6)


def test_pruning_ties_keep_smaller_ids():
    table = count_trigrams([[1, 1, t] for t in range(20, 6, -1)], vocab_size=32, top_k=12)
    assert table.succ.tolist() == list(range(7, 19))
    np.testing.assert_allclose(table.probs, np.full(12, 1 / 14), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_reference(seed):
    rng = np.random.default_rng(seed)
    corpus = random_corpus(rng, 200, vocab=40)
    top_k = [12, 3, 1][seed]
    table = count_trigrams(corpus, vocab_size=40, top_k=top_k)
    assert_rows_close(table_rows(table), ref.trigram_rows(corpus, top_k=top_k))


def test_count_rejects_bad_ids():
    with pytest.raises(ValueError, match="token id 9 is outside \\[0, 8\\)"):
        count_trigrams([[1, 2, 9]], vocab_size=8)
    with pytest.raises(ValueError, match="vocab_size must be in"):
        count_trigrams([[1, 2, 3]], vocab_size=1 << 22)


# ---------------------------------------------------------------------------------------------
# corpus files


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Say hi.", "input": "", "output": "Hi!", "id": 7},
        {"instruction": "Prove the Pythagorean Theorem.", "input": "", "output": "Proof."},
        {"question": "Q?", "answer": ["A1", "A2"]},
        "a bare string",
    ]))
    (tmp_path / "b.json").write_text(json.dumps([
        {"prompt": {"text": "root", "role": "prompter",
                    "replies": [{"text": "reply", "replies": [{"text": "deeper"}]}]}},
        {"instances": [{"input": "in", "output": "out"}], "name": "not text"},
    ]))
    (tmp_path / "c.txt").write_text("line one\nline two\n")
    assert list(read_texts(tmp_path / "a.jsonl")) == ["Say hi.", "Hi!", "Q?", "A1", "A2",
                                                      "a bare string"]
    assert list(read_texts(tmp_path / "b.json")) == ["root", "reply", "deeper", "in", "out"]
    assert list(read_texts(tmp_path / "c.txt")) == ["line one\nline two\n"]
    evaluation = tmp_path / "spec_bench"
    evaluation.mkdir()
    (evaluation / "question.jsonl").write_text('{"turns": ["x"]}\n')
    with pytest.raises(ValueError, match="evaluation file"):
        list(read_texts(evaluation / "question.jsonl"))


def test_build_from_files_with_a_callable_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"instruction": t, "output": t})
                                for t in ["abcab", "abd", "abcab"]))

    def encode(text):
        return [ord(c) - ord("a") for c in text]

    out = tmp_path / "t.bin"
    table = build_trigram_table(corpus, encode, out)
    # "abcab" is deduplicated (4 copies -> 1), "abd" once: (a,b) -> c 1, d 1; (b,c) -> a; (c,a) -> b
    assert table_rows(table) == {(0, 1): [(2, 0.5), (3, 0.5)], (1, 2): [(0, 1.0)],
                                 (2, 0): [(1, 1.0)]}
    assert table.vocab_size == 4
    assert table_rows(TrigramTable.load(out, vocab_size=4)) == table_rows(table)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        build_trigram_table(tmp_path / "missing.jsonl", encode)


def test_build_counts_extra_sequences_with_their_weight(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"instruction": "abd", "output": ""}))

    def encode(text):
        return [ord(c) - ord("a") for c in text]

    # (a, b) -> d once from the file, -> c three times from the extra sequence
    table = build_trigram_table(corpus, encode, extra=[[0, 1, 2]], extra_weight=3)
    assert table_rows(table) == {(0, 1): [(2, 0.75), (3, 0.25)]}
    assert table.num_tokens == 3 + 3 * 3
    unweighted = build_trigram_table(corpus, encode, extra=[[0, 1, 2]], extra_weight=0)
    assert table_rows(unweighted) == {(0, 1): [(3, 1.0)]}
    with pytest.raises(ValueError, match="extra_weight"):
        build_trigram_table(corpus, encode, extra=[[0, 1, 2]], extra_weight=-1)


def test_build_trigram_command_counts_saved_own_answers(tmp_path, monkeypatch):
    from adaeagle_ext.train import build_trigram as command
    from adaeagle_ext.train.features import TokenisedChat, save_chats

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"instruction": "abd", "output": ""}))
    answers = tmp_path / "answers.json"
    save_chats([TokenisedChat([3, 0, 1], [2, 2])], answers)  # prompt "... a b", answer "c c"
    monkeypatch.setattr(command, "load_tokenizer",
                        lambda spec: lambda text: [ord(c) - ord("a") for c in text])
    out = tmp_path / "t.bin"
    command.main(["--tokenizer", "unused", "--out", str(out), "--own-answers", "1",
                  "--own-weight", "2", "--answers", str(answers), str(corpus)])
    # the answer counted with the prompt's last two tokens, twice: (a, b) -> c, (b, c) -> c
    assert_rows_close(table_rows(TrigramTable.load(out)),
                      {(0, 1): [(2, 2 / 3), (3, 1 / 3)], (1, 2): [(2, 1.0)]})
    card = out.with_suffix(".md").read_text()
    assert "own greedy answers" in card and "each counted 2 times" in card
    with pytest.raises(SystemExit):
        command.main(["--tokenizer", "unused", "--out", str(out), "--own-weight", "-1",
                      str(corpus)])



def test_own_answers_refuses_a_file_made_with_other_settings(tmp_path):
    from adaeagle_ext.train import build_trigram as command
    from adaeagle_ext.train.features import TokenisedChat, save_chats

    answers = tmp_path / "answers.json"
    save_chats([TokenisedChat([3, 0, 1], [2, 2, 2])], answers)
    root = tmp_path / "data"
    # no settings file: read as is (nothing to check but the sizes)
    assert len(command.own_answers(1, 11, 128, root, answers)) == 1
    with pytest.raises(SystemExit, match="answers of up to 3 tokens"):
        command.own_answers(1, 11, 2, root, answers)
    with pytest.raises(SystemExit, match="holds 1 answers"):
        command.own_answers(0, 11, 128, root, answers)
    settings = command.answers_settings(answers)
    assert settings.name == "answers.settings.json"
    settings.write_text(json.dumps({"count": 1, "seed": 11, "max_new_tokens": 128,
                                    "data_root": str(root.resolve())}))
    assert command.own_answers(1, 11, 128, root, answers)[0].response == [2, 2, 2]
    for count, seed, new_tokens in ((1, 12, 128), (2, 11, 128), (1, 11, 64)):
        with pytest.raises(SystemExit, match="was made with"):
            command.own_answers(count, seed, new_tokens, root, answers)
    with pytest.raises(SystemExit, match="was made with"):
        command.own_answers(1, 11, 128, tmp_path / "other", answers)

# ---------------------------------------------------------------------------------------------
# the file format


def saved_table(tmp_path) -> tuple[TrigramTable, object]:
    rng = np.random.default_rng(5)
    table = count_trigrams(random_corpus(rng, 100, 30), vocab_size=30)
    path = tmp_path / "table.bin"
    table.save(path)
    return table, path


def test_file_round_trip(tmp_path):
    table, path = saved_table(tmp_path)
    loaded = TrigramTable.load(path, vocab_size=30)
    for name in ("keys", "offsets", "succ", "probs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
        assert getattr(loaded, name).dtype == getattr(table, name).dtype
    assert (loaded.vocab_size, loaded.top_k, loaded.num_tokens) == (30, 12, table.num_tokens)
    assert path.stat().st_size == HEADER.size + 12 * table.num_keys + 4 + 8 * table.num_entries
    empty = tmp_path / "empty.bin"
    TrigramTable.empty(30).save(empty)
    assert TrigramTable.load(empty).num_keys == 0


def test_file_errors(tmp_path):
    _, path = saved_table(tmp_path)
    data = bytearray(path.read_bytes())

    def write(name, blob):
        p = tmp_path / name
        p.write_bytes(bytes(blob))
        return p

    with pytest.raises(TrigramFileError, match="built for a vocabulary of 30 tokens.*has 31"):
        TrigramTable.load(path, vocab_size=31)
    with pytest.raises(TrigramFileError, match="cut.bin is truncated"):
        TrigramTable.load(write("cut.bin", data[:-4]))
    with pytest.raises(TrigramFileError, match="short.bin is truncated.*header"):
        TrigramTable.load(write("short.bin", data[:10]))
    with pytest.raises(TrigramFileError, match="magic.bin is not a tri-gram table"):
        TrigramTable.load(write("magic.bin", b"XXXX" + data[4:]))
    future = data.copy()
    future[4:8] = struct.pack("<I", 2)
    with pytest.raises(TrigramFileError, match="v2.bin has format version 2"):
        TrigramTable.load(write("v2.bin", future))
    flipped = data.copy()
    flipped[-3] ^= 0x40
    with pytest.raises(TrigramFileError, match="flipped.bin is corrupt: checksum"):
        TrigramTable.load(write("flipped.bin", flipped))
    with pytest.raises(TrigramFileError, match="cannot read tri-gram table .*nothing.bin"):
        TrigramTable.load(tmp_path / "nothing.bin")


def test_file_errors_on_inconsistent_arrays(tmp_path):
    table, _ = saved_table(tmp_path)
    table.keys = table.keys[::-1].copy()
    path = tmp_path / "unsorted.bin"
    table.save(path)  # a writer bug: the checksum is right, the arrays are not
    with pytest.raises(TrigramFileError, match="unsorted.bin is corrupt: keys are not strictly"):
        TrigramTable.load(path)


# ---------------------------------------------------------------------------------------------
# online reinforcement


def test_online_reinforcement_golden():
    table = count_trigrams([[1, 2, 3, 1, 2, 4, 1, 2, 3]], vocab_size=8)
    stored = {name: getattr(table, name).copy() for name in ("keys", "offsets", "succ", "probs")}
    online = OnlineTrigrams(table)
    online.reinforce([1, 2, 3])
    assert online.value(1, 2, 3) == pytest.approx(2 / 3 + 0.04)
    assert online.value(1, 2, 4) == pytest.approx(1 / 3)  # not in the window: unchanged
    online.reinforce([7, 1, 2, 5])  # (7,1,2) is new, (1,2,5) is new to a stored row
    assert online.value(7, 1, 2) == pytest.approx(0.04)
    assert online.value(1, 2, 5) == pytest.approx(0.04)
    keys, offsets, succ, vals = online.tensors()
    assert keys.tolist() == [key(1, 2), key(7, 1)]
    assert offsets.tolist() == [0, 2, 3]
    assert succ.tolist() == [3, 5, 2]
    np.testing.assert_allclose(vals, [2 / 3 + 0.04, 0.04, 0.04], rtol=1e-6)
    for _ in range(200):
        online.reinforce([1, 2, 3])
    assert online.value(1, 2, 3) == 3.0  # capped, not renormalised
    for name, array in stored.items():
        np.testing.assert_array_equal(getattr(table, name), array)  # stored table untouched


def test_online_reinforcement_only_last_16_tokens_and_matches_reference():
    table = count_trigrams([[1, 2, 3, 4, 5, 6]], vocab_size=40)
    seq = list(range(10, 30))  # 20 tokens: the first 4 fall outside the window
    online = OnlineTrigrams(table)
    online.reinforce(seq)
    assert online.value(10, 11, 12) == 0.0
    assert online.value(13, 14, 15) == 0.0
    assert online.value(14, 15, 16) == pytest.approx(0.04)
    assert online.value(27, 28, 29) == pytest.approx(0.04)
    expected: dict = {}
    online.clear()
    for step in range(3):  # three steps of one committed token each
        ref.aded_reinforce(expected, table.prob, seq[: 16 + step])
        online.reinforce(seq[: 16 + step])
    for (t1, t2), row in expected.items():
        for t3, value in row.items():
            assert online.value(t1, t2, t3) == pytest.approx(value)
    assert sum(len(r) for r in online.rows.values()) == sum(len(r) for r in expected.values())


def test_drafter_observe_reinforces_the_last_16_committed_tokens():
    drafter = AdedDrafter(None, vocab_size=64, prompt_window=16)
    drafter.reset(list(range(40, 60)))  # 20 prompt tokens: ADED's first call sees the last 16
    assert drafter.online.value(40, 41, 42) == 0.0
    assert drafter.online.value(44, 45, 46) == pytest.approx(0.04)
    drafter.observe([60, 61])
    assert drafter.online.value(44, 45, 46) == pytest.approx(0.04)  # left the window
    assert drafter.online.value(46, 47, 48) == pytest.approx(0.08)
    assert drafter.online.value(59, 60, 61) == pytest.approx(0.04)
    whole = AdedDrafter(None, vocab_size=64)  # default: the whole prompt
    whole.reset(list(range(40, 60)))
    assert whole.online.value(40, 41, 42) == pytest.approx(0.04)


# ---------------------------------------------------------------------------------------------
# the search op


def draft(table, online, context, **kw):
    return ops.aded_draft(table.tensors(), online.tensors(), torch.tensor(context), **kw)


def tree_lists(out):
    n = int(out.num_nodes[0])
    return out.parents[:n].tolist(), out.tokens[:n].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_search_matches_reference_exactly(seed):
    rng = np.random.default_rng(100 + seed)
    vocab = [12, 30, 60][seed % 3]
    table = count_trigrams(random_corpus(rng, 300, vocab), vocab_size=vocab)
    online = random_overlay(rng, table, vocab, size=int(rng.integers(0, 80)))
    kw = [dict(), dict(max_len=2), dict(max_len=6, top_paths=40), dict(max_nodes=8),
          dict(iterations=20, top_paths=3), dict(c1=1.0, c2=2.0, iterations=300)][seed]
    for trial in range(4):
        context = rng.integers(0, vocab, size=int(rng.integers(1, 6))).tolist()
        got = draft(table, online, context, seed=trial, **kw)
        expected = ref.aded_draft(table.tensors(), online.tensors(), torch.tensor(context),
                                  seed=trial, **kw)
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e), (kw, context)


def test_search_is_deterministic_under_a_seed():
    rng = np.random.default_rng(7)
    table = count_trigrams(random_corpus(rng, 400, 20), vocab_size=20)
    online = OnlineTrigrams(table)
    context = [0, 1]
    runs = [tree_lists(draft(table, online, context, seed=s)) for s in (3, 3, 4, 5, 6)]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])  # the rollouts do depend on the seed


def merged_row(table: TrigramTable, online: OnlineTrigrams, t1: int, t2: int) -> set[int]:
    succ, _ = table.row(t1, t2)
    return set(succ.tolist()) | set(online.rows.get(key(t1, t2), {}))


@pytest.mark.parametrize("seed", range(4))
def test_tree_is_valid_and_tokens_come_from_rows(seed):
    rng = np.random.default_rng(seed)
    table = count_trigrams(random_corpus(rng, 500, 25), vocab_size=25)
    online = random_overlay(rng, table, 25, size=40)
    for trial in range(5):
        context = rng.integers(0, 25, size=3).tolist()
        out = draft(table, online, context, seed=trial)
        parents, tokens = tree_lists(out)
        assert 2 <= len(parents) <= 64
        assert parents[0] == -1 and tokens[0] == context[-1]
        assert out.parents[len(parents):].eq(-1).all() and out.tokens[len(parents):].eq(-1).all()
        depth = [0] * len(parents)
        for i in range(1, len(parents)):
            assert 0 <= parents[i] < i
            depth[i] = depth[parents[i]] + 1
            assert depth[i] <= 4  # 3 searched tokens + 1 greedy token
            p = parents[i]
            prev = context[-2] if p == 0 else tokens[parents[p]]
            row = merged_row(table, online, prev, tokens[p])
            assert tokens[i] in row or (len(parents) == 2 and tokens[i] == 100)
            siblings = [tokens[j] for j in range(1, len(parents)) if parents[j] == p]
            assert len(siblings) == len(set(siblings))  # paths are deduplicated
        n = len(parents)
        ops.build_tree(out.parents[:n], torch.tensor([0, n], dtype=torch.int32),
                       torch.tensor([10], dtype=torch.int32), 63, 64)


def test_frequent_continuations_are_drafted():
    # after "1 2": "3 5 6 7" 80 times, "4 8 9" 15 times, "10" 5 times
    seqs = [[1, 2, 3, 5, 6, 7]] * 80 + [[1, 2, 4, 8, 9]] * 15 + [[1, 2, 10]] * 5
    table = count_trigrams(seqs, vocab_size=16)
    parents, tokens = tree_lists(draft(table, OnlineTrigrams(table), [0, 1, 2]))
    assert tokens[1] == 3 and parents[1] == 0  # the most visited path comes first

    def path_of(i):
        out = []
        while i > 0:
            out.append(tokens[i])
            i = parents[i]
        return out[::-1]

    paths = {tuple(path_of(i)) for i in range(len(parents))}
    assert (3, 5, 6, 7) in paths  # 3 searched tokens + the greedy one
    assert (4, 8, 9) in paths
    assert (10,) in paths
    assert len(parents) == 1 + 4 + 3 + 1


def test_search_budget_and_trimming():
    rng = np.random.default_rng(11)
    table = count_trigrams(random_corpus(rng, 2000, 14), vocab_size=14)
    for max_nodes in (2, 5, 16):
        out = draft(table, OnlineTrigrams(table), [1, 2], max_nodes=max_nodes)
        assert int(out.num_nodes[0]) == max_nodes  # a bushy table fills a small budget
    full = int(draft(table, OnlineTrigrams(table), [1, 2]).num_nodes[0])
    assert 16 < full <= 1 + 24 * 4  # 24 paths of at most 4 tokens, shared prefixes once


def test_paths_to_tree_golden():
    paths = torch.tensor([[5, 6, 7, -1], [5, 6, 8, -1], [5, 6, 7, -1], [9, -1, -1, -1],
                          [5, 10, 11, 12]])
    lens = torch.tensor([3, 3, 3, 1, 4], dtype=torch.int32)
    out = ops.aded_paths_to_tree(paths, lens, root_token=1, max_nodes=6)
    assert out.parents.tolist() == [-1, 0, 1, 2, 2, 0]
    assert out.tokens.tolist() == [1, 5, 6, 7, 8, 9]
    assert out.num_nodes.tolist() == [6]
    out = ops.aded_paths_to_tree(paths, lens, root_token=1, max_nodes=8)
    assert out.parents.tolist() == [-1, 0, 1, 2, 2, 0, 1, 6]  # 12 is trimmed
    assert out.tokens.tolist() == [1, 5, 6, 7, 8, 9, 10, 11]
    out = ops.aded_paths_to_tree(paths, lens, root_token=1, max_nodes=12)
    assert out.parents.tolist() == [-1, 0, 1, 2, 2, 0, 1, 6, 7, -1, -1, -1]
    assert out.num_nodes.tolist() == [9]


@pytest.mark.parametrize("seed", range(3))
def test_paths_to_tree_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(10):
        num, width = int(torch.randint(1, 30, (1,), generator=gen)), 5
        paths = torch.randint(0, 4, (num, width), generator=gen)
        lens = torch.randint(0, width + 1, (num,), generator=gen, dtype=torch.int32)
        max_nodes = int(torch.randint(2, 65, (1,), generator=gen))
        out = ops.aded_paths_to_tree(paths, lens, 99, max_nodes)
        parents, tokens = ref.aded_paths_to_tree(
            [p[:n].tolist() for p, n in zip(paths, lens.tolist(), strict=True)], 99, max_nodes)
        assert tree_lists(out) == (parents, tokens)


def test_opcheck():
    rng = np.random.default_rng(0)
    table = count_trigrams(random_corpus(rng, 100, 20), vocab_size=20)
    online = random_overlay(rng, table, 20, 30)
    out = ops.aded_draft(table.tensors(), online.tensors(), torch.tensor([1, 2]))
    torch.library.opcheck(torch.ops.adaeagle.aded_draft,
                          (*table.tensors(), *online.tensors(), torch.tensor([1, 2]), 150, 4,
                           24, 64, 32.0, 8.0, 100, 0, *(torch.empty_like(t) for t in out)))
    paths, lens = torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 1], dtype=torch.int32)
    out = ops.aded_paths_to_tree(paths, lens, 0, 4)
    torch.library.opcheck(torch.ops.adaeagle.aded_paths_to_tree,
                          (paths, lens, 0, 4, *(torch.empty_like(t) for t in out)))


def test_bad_arguments_raise():
    table = count_trigrams([[1, 2, 3]], vocab_size=8)
    t, o, ctx = table.tensors(), OnlineTrigrams(table).tensors(), torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="table_keys must be Long"):
        ops.aded_draft((t[0].int(), *t[1:]), o, ctx)
    with pytest.raises(RuntimeError, match="online_offsets.size\\(0\\) must be 1"):
        ops.aded_draft(t, (o[0], torch.zeros(2, dtype=torch.int32), *o[2:]), ctx)
    with pytest.raises(RuntimeError, match="table_vals must be Float"):
        ops.aded_draft((*t[:3], t[3].double()), o, ctx)
    with pytest.raises(RuntimeError, match="table_offsets must run from 0 to 1"):
        ops.aded_draft((t[0], torch.tensor([0, 2], dtype=torch.int32), *t[2:]), o, ctx)
    with pytest.raises(RuntimeError, match="context must hold at least the root token"):
        ops.aded_draft(t, o, torch.tensor([], dtype=torch.int64))
    with pytest.raises(RuntimeError, match="context\\[1\\]=-5 is not a token id"):
        ops.aded_draft(t, o, torch.tensor([1, -5]))
    with pytest.raises(RuntimeError, match="max_nodes must be in \\[2, 64\\], got 65"):
        ops.aded_draft(t, o, ctx, max_nodes=65)
    with pytest.raises(RuntimeError, match="max_len must be in"):
        ops.aded_draft(t, o, ctx, max_len=0)
    with pytest.raises(RuntimeError, match="need c1 >= 0 and c2 > 0"):
        ops.aded_draft(t, o, ctx, c2=0.0)
    with pytest.raises(RuntimeError, match="tokens.size\\(0\\) must be 64"):
        ops.aded_draft(t, o, ctx, out=ops.DraftTree(torch.empty(64, dtype=torch.int32),
                                                    torch.empty(8, dtype=torch.int64),
                                                    torch.empty(1, dtype=torch.int32)))
    with pytest.raises(RuntimeError, match="path_lens\\[0\\]=3 must be in \\[0, 2\\]"):
        ops.aded_paths_to_tree(torch.tensor([[1, 2]]), torch.tensor([3], dtype=torch.int32), 0)


def test_inconsistent_rows_raise():
    keys = torch.tensor([key(1, 2), key(2, 3)])
    offsets = torch.tensor([0, 3, 2], dtype=torch.int32)  # row 0 runs past the entries
    bad = (keys, offsets, torch.tensor([3, 4], dtype=torch.int32), torch.tensor([0.5, 0.5]))
    empty = OnlineTrigrams(EMPTY).tensors()
    with pytest.raises(RuntimeError, match="table_offsets are inconsistent"):
        ops.aded_draft(bad, empty, torch.tensor([1, 2]))
    negative = (keys, torch.tensor([0, 1, 2], dtype=torch.int32),
                torch.tensor([-3, 4], dtype=torch.int32), torch.tensor([0.5, 0.5]))
    with pytest.raises(RuntimeError, match="successor id .* is negative"):
        ops.aded_draft(negative, empty, torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------
# the drafter


def test_drafter_without_table_drafts_from_the_prompt():
    drafter = AdedDrafter(None, vocab_size=64)
    drafter.reset([7, 8, 9, 10, 11, 7, 8])
    parents, tokens = drafter.propose()
    assert parents.dtype == torch.int32 and tokens.dtype == torch.int64
    assert tokens[0] == 8 and parents[0] == -1
    # the prompt's own continuation of "7 8": 9 10 11 7
    assert tokens.tolist()[1:5] == [9, 10, 11, 7] and parents.tolist()[1:5] == [0, 1, 2, 3]
    drafter.observe([9, 10, 20])  # the model went elsewhere after "9 10"
    parents, tokens = drafter.propose()
    assert tokens[0] == 20 and len(tokens) == 2 and tokens[1] == 63  # nothing after (10, 20)


def test_drafter_fallback_without_table_or_context():
    drafter = AdedDrafter(None, vocab_size=500)
    drafter.reset([5])
    parents, tokens = drafter.propose()
    assert parents.tolist() == [-1, 0] and tokens.tolist() == [5, 100]
    parents, tokens = drafter.propose([3, 4])
    assert tokens.tolist() == [4, 100]
    drafter.reset([])
    with pytest.raises(ValueError, match="at least one committed token"):
        drafter.propose()


def test_drafter_with_table_is_deterministic_and_checks_vocab(tmp_path):
    rng = np.random.default_rng(3)
    table = count_trigrams(random_corpus(rng, 300, 30), vocab_size=30)
    with pytest.raises(ValueError, match="built for 30 tokens, the model has 31"):
        AdedDrafter(table, vocab_size=31)
    with pytest.raises(ValueError, match="needs vocab_size"):
        AdedDrafter(None)
    a, b = AdedDrafter(table, 30, seed=1), AdedDrafter(table, 30, seed=1)
    for d in (a, b):
        d.reset([0, 1, 2, 1])
    for _ in range(3):
        pa, ta = a.propose()
        pb, tb = b.propose()
        assert torch.equal(pa, pb) and torch.equal(ta, tb)
        assert 2 < len(pa) <= 64
        a.observe(ta[1:3].tolist())
        b.observe(tb[1:3].tolist())


@pytest.mark.skipif(not DEFAULT_TABLE_PATH.exists(), reason="no shipped table")
def test_shipped_table_loads_and_matches_its_card():
    table = load_default_table(vocab_size=49152)  # SmolLM2-135M-Instruct's vocabulary
    assert table.top_k == 12 and np.all(np.diff(table.offsets) <= 12)
    card = DEFAULT_TABLE_PATH.with_suffix(".md").read_text()
    assert f"Tokens counted: {table.num_tokens:,}" in card
    assert f"Keys (bigrams): {table.num_keys:,}; entries: {table.num_entries:,}" in card
    assert DEFAULT_TABLE_PATH.stat().st_size < 20 * 2**20
    assert "alpaca_cleaned" not in card  # CC BY-NC data stays out of the shipped table
