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


def test_report_keeps_the_commit_the_run_started_with(run, tmp_path):
    from adaeagle_ext.bench.report import machine_info

    start = machine_info()
    md = write_report(run, tmp_path, info=start).read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["git_commit"] == start["git_commit"]
    assert "git_commit_at_end" not in data["machine"]
    assert f"commit {start['git_commit']}." in md
    moved = dict(start, git_commit="0000000")  # the tree changed while the run went on
    md = write_report(run, tmp_path, info=moved).read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["git_commit"] == "0000000"
    assert data["machine"]["git_commit_at_end"] == start["git_commit"]
    assert f"commit 0000000 (at the end: {start['git_commit']})." in md


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
    # a spec with several knobs stays one method
    assert resolve_methods("eagle2:top_k=3,depth=3,total_tokens=6,chain:2") == [
        "ar", "eagle2:top_k=3,depth=3,total_tokens=6", "chain:2"]
    with pytest.raises(ValueError, match="unknown method 'depth=3'"):
        resolve_methods("depth=3,ar")


def test_cli_rejects_unknown_method(capsys):
    from adaeagle_ext.cli import main

    assert main(["bench", "--methods", "ar,chain-of-thought", "--no-progress"]) == 2
    assert "peers: hf, hf-pld" in capsys.readouterr().err


# --- LDLP methods: predictions per step, their error, the histograms, readme_tables ----------

LDLP_METHODS = ["adaeagle", "adaeagle-ddd", "adaeagle-tree"]
LDLP_NEW = 14


@pytest.fixture(scope="module")
def ldlp_run():
    """ar, the three LDLP methods and oracle on a vocab-8 target (random head, an LDLP whose
    predictions spread over 0..4, hand-made step costs for adaeagle-tree)."""
    from eagle_fixtures import random_head, tiny_target
    from ldlp_fixtures import spread_ldlp

    from adaeagle_ext.bench.runner import RuntimeMethod
    from adaeagle_ext.spec.adaeagle import AdaEagle, AdaEagleDdd
    from adaeagle_ext.spec.adaeagle_tree import AdaEagleTree
    from adaeagle_ext.spec.oracle import OracleChain
    from adaeagle_ext.spec.step_costs import StepCosts

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_target(seed=4)
    head, ldlp = random_head(model, seed=4), spread_ldlp(model, seed=4, k_max=4)
    costs = StepCosts((1, 4, 8, 64), (0.010, 0.011, 0.014, 0.060), (1, 8, 64),
                      (0.002, 0.003, 0.010))
    strategies = {"ar": "ar", "adaeagle": AdaEagle(head=head, ldlp=ldlp),
                  "adaeagle-ddd": AdaEagleDdd(head=head, ldlp=ldlp),
                  "adaeagle-tree": AdaEagleTree(head=head, ldlp=ldlp, top_k=2, costs=costs),
                  "oracle": OracleChain(head=head, k_max=4)}
    tok = FakeTokenizer()
    target = Target(model, lambda m: [i % 8 for i in tok.encode_chat(m)], tok.decode, [])
    run = run_bench(target, QUESTIONS, list(strategies), max_new_tokens=LDLP_NEW, warmup=1,
                    progress=False,
                    runners={m: RuntimeMethod(model, s) for m, s in strategies.items()})
    run.settings["dtype"] = "float32"
    yield run
    torch.set_num_threads(n)


def test_predictions_are_recorded_per_step_and_aligned(ldlp_run):
    assert ldlp_run.methods == ["ar", *LDLP_METHODS, "oracle"]
    assert all(r["identical"] == 3 for r in ldlp_run.lossless.values())
    for m in ldlp_run.methods:
        for q in ldlp_run.results[m]:
            for t in q.turns:
                assert len(t.accepted) == t.steps and sum(t.accepted) == t.step_tokens
                assert (t.predicted is not None) == (m in LDLP_METHODS)
                if t.predicted is not None:
                    # one prediction per step of this turn only (reset by every generate call)
                    assert len(t.predicted) == t.steps
                    assert all(0 <= k <= 4 for k in t.predicted)
                    assert all(a - 1 <= k or m == "adaeagle-ddd"
                               for a, k in zip(t.accepted, t.predicted, strict=True))
    # adaeagle drafts exactly the prediction of its step, capped near max_new_tokens: a list
    # shifted by one step or carried over from another turn would not match
    ks = set()
    for q in ldlp_run.results["adaeagle"]:
        for t in q.turns:
            out, caps = 1, []
            for a in t.accepted:
                caps.append(max(0, LDLP_NEW - out - 1))
                out += a
            assert t.draft_tokens == [min(k, c) for k, c in zip(t.predicted, caps, strict=True)]
            ks.update(t.predicted)
    assert len(ks) >= 3, "the LDLP should predict several lengths"


def test_ldlp_error_and_histograms_in_the_summaries(ldlp_run):
    s = ldlp_run.summaries
    for m in ["ar", "oracle"]:
        assert s[m][OVERALL].ldlp is None
    assert s["ar"][OVERALL].accept_hist == {1: s["ar"][OVERALL].accept_hist[1]}
    for m in LDLP_METHODS:
        o = s[m][OVERALL]
        turns = [t for q in ldlp_run.results[m] for t in q.turns]
        steps = sum(t.steps for t in turns)
        assert o.ldlp["steps"] == steps == sum(o.accept_hist.values())
        assert sum(o.ldlp["predicted_hist"].values()) == steps
        assert o.ldlp["under"] + o.ldlp["exact"] + o.ldlp["over"] == pytest.approx(1.0)
        assert sum(k * c for k, c in o.accept_hist.items()) / steps == pytest.approx(o.tau)
        assert sum(s[m][task].ldlp["steps"] for task in ldlp_run.tasks) == steps
        if m != "adaeagle-ddd":  # never more drafts accepted than predicted
            assert o.ldlp["under"] == 0.0


def test_report_with_ldlp_methods_and_readme_tables(ldlp_run, tmp_path):
    import importlib.util
    from pathlib import Path

    md = write_report(ldlp_run, tmp_path).read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    e = data["summaries"]["adaeagle"]["overall"]["ldlp"]
    assert e["steps"] == sum(int(c) for c in e["predicted_hist"].values())
    assert data["summaries"]["oracle"]["overall"]["ldlp"] is None
    assert data["summaries"]["ar"]["overall"]["accept_hist"].keys() == {"1"}
    error_table = md.split("LDLP prediction error")[1].split("LDLP MAE")[0]
    assert "| method | steps | MAE | bias | under | exact | over |" in error_table
    hists = md.split("Predicted draft lengths")[1]
    for m in LDLP_METHODS:
        steps = data["summaries"][m]["overall"]["ldlp"]["steps"]
        assert f"\n| {m} | {steps} | " in error_table
        assert f"| {m} (predicted) |" in hists
    assert "| oracle (ideal) |" in hists
    assert "Accepted tokens per step" in md
    rows = [json.loads(ln) for ln in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    ada = next(r for r in rows if r["method"] == "adaeagle")
    assert [len(p) for p in ada["predicted"]] == [len(a) for a in ada["accepted"]]
    assert "predicted" not in next(r for r in rows if r["method"] == "oracle")

    spec = importlib.util.spec_from_file_location(
        "readme_tables", Path(__file__).resolve().parents[1] / "benchmarks" / "readme_tables.py")
    readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme)
    text = readme.blocks(tmp_path)
    assert "| adaeagle-tree | " in text and "| ar | 1.00 | " in text
    assert "| oracle | " in text and " | 3/3 |" in text
    assert text.count("| adaeagle-ddd | ") == 2  # overall and LDLP tables
    pytest.importorskip("matplotlib")
    for name in ["accept_hist.png", "predicted_hist.png"]:
        assert (tmp_path / name).stat().st_size > 1000
        assert f"({name})" in md
    assert "/accept_hist.png)" in text and "/predicted_hist.png)" in text


def test_paper_table_methods_keep_their_order():
    from adaeagle_ext.spec.strategy import make_strategy

    names = ("ar,chain:2,chain:3,chain:4,chain:5,chain:6,ddd,maxconf,adaeagle,adaeagle-ddd,"
             "eagle2,adaeagle-tree,oracle")
    got = resolve_methods(names)
    assert got == names.split(",")
    assert resolve_methods("oracle,chain:3,ar,chain:3") == ["ar", "oracle", "chain:3"]
    assert [make_strategy(m).name for m in got][-4:] == ["adaeagle-ddd", "eagle2",
                                                         "adaeagle-tree", "oracle"]
