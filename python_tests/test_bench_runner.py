"""The harness end to end on a tiny random model: two-turn flow, peers, losslessness, report."""

import json

import pytest
import torch
from model_fixtures import ours, random_weights, tiny_config

from adaeagle_ext.bench.metrics import OVERALL
from adaeagle_ext.bench.prompts import Question
from adaeagle_ext.bench.report import write_report
from adaeagle_ext.bench.runner import Target, resolve_methods, run_bench
from adaeagle_ext.spec import strategy as strategy_mod
from adaeagle_ext.spec.ar import AutoRegressive

CONFIG = tiny_config()
QUESTIONS = [Question("81", "writing", "mt_bench", ("Write a poem.", "Now shorter.")),
             Question("161", "translation", "translation", ("Translate: Guten Tag",)),
             Question("321", "qa", "qa", ("Who wrote Hamlet?",))]
ALTERED_STEP = 3  # the broken strategy alters the token of this decode step (0-based)


class FakeTokenizer:
    """Characters -> ids; a marker token per role; records every conversation it encodes."""

    def __init__(self):
        self.seen = []

    def encode_chat(self, messages):
        self.seen.append(messages)
        ids = []
        for m in messages:
            ids.append(1 if m["role"] == "user" else 2)
            ids += [10 + ord(c) % 90 for c in m["content"][:30]]
        return ids + [2]

    @staticmethod
    def decode(ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


class Broken(AutoRegressive):
    """``ar`` that replaces the token of one decode step: must be reported as not lossless."""

    name = "test-broken"

    def setup(self, model, batch):
        self.step = 0
        self.vocab = model.config.vocab_size

    def verify(self, state, tree, logits):
        acc = super().verify(state, tree, logits)
        if self.step == ALTERED_STEP:
            acc.out_tokens[:, 0] = (acc.out_tokens[:, 0] + 1) % self.vocab
        self.step += 1
        return acc


@pytest.fixture(scope="module")
def broken():
    strategy_mod.register(Broken)
    yield Broken.name
    strategy_mod._REGISTRY.pop(Broken.name)


@pytest.fixture(scope="module")
def target():
    tok = FakeTokenizer()
    return Target(ours(CONFIG, random_weights(CONFIG, seed=5)), tok.encode_chat, tok.decode, [])


@pytest.fixture(scope="module")
def run(target, broken):
    torch.set_num_threads(2)
    return run_bench(target, QUESTIONS, ["hf", "hf-pld", broken], max_new_tokens=12,
                     warmup=1, progress=False)


def test_two_turn_conversation_sees_the_first_answer(target):
    tok = FakeTokenizer()
    t = Target(target.model, tok.encode_chat, tok.decode, [])
    r = run_bench(t, QUESTIONS[:1], ["ar"], max_new_tokens=6, warmup=0, progress=False)
    (q,) = r.results["ar"]
    assert len(q.turns) == 2
    first, second = tok.seen
    answer = FakeTokenizer.decode(q.turns[0].token_ids)
    assert first == [{"role": "user", "content": "Write a poem."}]
    assert second == [{"role": "user", "content": "Write a poem."},
                      {"role": "assistant", "content": answer},
                      {"role": "user", "content": "Now shorter."}]
    assert q.turns[1].prompt_ids[:len(q.turns[0].prompt_ids) - 1] == q.turns[0].prompt_ids[:-1]
    assert q.new_tokens == 12
    assert q.tokens_per_s == pytest.approx(12 / (q.turns[0].wall_s + q.turns[1].wall_s))


def test_methods_run_side_by_side(run):
    assert run.methods == ["ar", "hf", "hf-pld", "test-broken"]
    assert run.tasks == ["mt_bench", "translation", "qa"]
    for m in run.methods:
        assert [q.qid for q in run.results[m]] == ["81", "161", "321"]
        assert all(t.new_tokens == 12 for q in run.results[m] for t in q.turns)
    s = run.summaries
    assert s["ar"][OVERALL].speedup == pytest.approx(1.0)
    assert s["ar"][OVERALL].tau == pytest.approx(1.0)
    assert s["hf"][OVERALL].tau == pytest.approx(1.0)  # 11 decode forwards for 11 tokens
    assert s["hf-pld"][OVERALL].tau >= 1.0
    assert s["ar"][OVERALL].draft_hist == {0: 4 * 11}  # 4 turns x 11 decode steps, no drafts
    assert s["hf"][OVERALL].draft_frac is None


def test_peers_match_ar_in_fp32_and_broken_strategy_is_caught(run, target):
    lossless = run.lossless
    assert lossless["hf"]["identical"] == 3 and lossless["hf-pld"]["identical"] == 3
    bad = lossless["test-broken"]
    assert bad["identical"] == 0 and bad["rate"] == 0.0
    ar = {q.qid: q for q in run.results["ar"]}
    for d in bad["divergences"]:
        # the prefill gives token 0, decode step s gives token s + 1
        assert (d["turn"], d["position"]) == (0, ALTERED_STEP + 1)
        tokens = ar[d["qid"]].turns[0].token_ids
        assert d["ar_token"] == tokens[ALTERED_STEP + 1]
        assert d["method_token"] == (d["ar_token"] + 1) % CONFIG.vocab_size
        # ar's token is the argmax of the recomputed logits: its gap bounds the top-2 gap
        assert d["token_gap"] >= d["top2_gap"] >= 0


def test_eos_is_cut_alike_for_runtime_and_hf(run, target):
    """An EOS id taken from ar's own output ends ar and hf at the same place."""
    tokens = run.results["ar"][1].turns[0].token_ids
    eos = tokens[5]
    t = Target(target.model, target.encode_chat, target.decode, [eos])
    r = run_bench(t, QUESTIONS[1:2], ["hf"], max_new_tokens=12, warmup=0, progress=False)
    ar, hf = r.results["ar"][0].turns[0], r.results["hf"][0].turns[0]
    assert ar.token_ids == tokens[:tokens.index(eos)] == hf.token_ids


def test_report_files(run, tmp_path):
    run.settings["dtype"] = "float32"
    md = write_report(run, tmp_path).read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["threads"] >= 1 and data["machine"]["git_commit"]
    assert data["summaries"]["hf"]["overall"]["tau"] == pytest.approx(1.0)
    assert data["lossless"]["test-broken"]["identical"] == 0
    assert "| test-broken | 0/3 (0%) | q81/t0/p4: " in md
    assert "| method | mt_bench | translation | qa | overall | tok/s | τ |" in md
    lines = (tmp_path / "outputs.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 3
    pytest.importorskip("matplotlib")
    for name in ["speedup.png", "tau.png", "draft_hist.png", "time_split.png"]:
        assert (tmp_path / name).stat().st_size > 1000


def test_method_names(broken):
    assert resolve_methods("hf,ar") == ["ar", "hf"]
    assert "test-broken" in resolve_methods("all")
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*strategies: .*\bar\b.*peers: hf"):
        resolve_methods("ar,nope")


def test_cli_rejects_unknown_method(capsys):
    from adaeagle_ext.cli import main

    assert main(["bench", "--methods", "ar,chain-of-thought", "--no-progress"]) == 2
    assert "peers: hf, hf-pld" in capsys.readouterr().err
