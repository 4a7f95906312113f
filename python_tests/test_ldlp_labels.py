"""LDLP label collection: batched labels equal a per-position run of the real ``chain:K``."""

import pytest
import torch
from eagle_fixtures import one_thread, random_head, tiny_target  # noqa: F401

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.generate import generate_ids
from adaeagle_ext.spec.sampling import SamplingParams
from adaeagle_ext.spec.strategy import StepState
from adaeagle_ext.train.features import TokenisedChat, target_features, write_shards
from adaeagle_ext.train.ldlp_labels import collect, load_labels, sequence_labels

EOS = 7


def greedy_sequences(model, n, seed, max_new_tokens=28):
    """(tokens, prompt length, ended with EOS) of the target's greedy answers to random
    prompts."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 7, (int(torch.randint(1, 9, (), generator=g)),),
                             generator=g).tolist() for _ in range(n)]
    outs, _ = generate_ids(model, prompts, max_new_tokens=max_new_tokens, eos_ids=[EOS])
    return [(p + o.token_ids, len(p), o.finish_reason == "eos")
            for p, o in zip(prompts, outs, strict=True)]


def chain_draft(model, head, tokens, feats, j, k):
    """The k tokens ``chain:k`` drafts right after a verification that accepted x_j and
    produced the bonus x_{j+1} (one fresh strategy per position: the slow reference)."""
    strat = EagleChain(str(k), head=head)
    strat.setup(model, 1)
    strat.observe_prefill(tokens[: j + 1], feats[: j + 1],
                          torch.tensor([0, j + 1], dtype=torch.int32))
    state = StepState(roots=tokens[j + 1: j + 2], active=torch.tensor([True]),
                      prefix_lens=torch.tensor([j + 1], dtype=torch.int32),
                      history=[tokens[: j + 2].tolist()], sampling=SamplingParams(),
                      generators=[torch.Generator()])
    tree = strat.propose(state)
    assert tree.tokens.numel() == k + 1
    return tree.tokens[1:].tolist()


def head_following_sequence(model, head, prompt, rounds, k):
    """A sequence that takes the head's own chain k times in a row (random heads rarely
    agree with the target twice, so this makes long labels to check)."""
    tokens = torch.tensor(prompt)
    for _ in range(rounds):
        (feats, _), = target_features(model, [tokens.tolist()])
        draft = chain_draft(model, head, tokens, feats, len(tokens) - 2, k)
        tokens = torch.cat([tokens, torch.tensor(draft)])
    return tokens


def reference_labels(model, head, tokens, feats, start, k, complete):
    labels, known = [], []
    n = len(tokens)
    for j in range(start, n - 2):
        draft = chain_draft(model, head, tokens, feats, j, k)
        cont = tokens[j + 2:].tolist()[:k]
        lcp = 0
        while lcp < len(cont) and draft[lcp] == cont[lcp]:
            lcp += 1
        labels.append(lcp)
        known.append(k if complete else len(cont))
    return labels, known


@pytest.mark.parametrize("seed,k,reduced", [(0, 6, False), (1, 8, True), (2, 3, False),
                                            (3, 10, True)])
def test_labels_match_chain_strategy(seed, k, reduced):
    model = tiny_target(seed=seed)
    vocab = torch.tensor([0, 2, 3, 4, 6, 7]) if reduced else None
    head = random_head(model, seed=seed, draft_vocab=vocab)
    deep = 0
    seqs = greedy_sequences(model, 4, seed)
    seqs.append((head_following_sequence(model, head, [3, 1, 4, 1, 5], 3, k), 4, False))
    for tokens, plen, complete in seqs:
        tokens = torch.as_tensor(tokens)
        (feats, _), = target_features(model, [tokens.tolist()])
        got = sequence_labels(head, tokens, feats, plen - 1, k, complete=complete)
        want, known = reference_labels(model, head, tokens, feats, plen - 1, k, complete)
        assert got.positions.tolist() == list(range(plen - 1, len(tokens) - 2))
        assert got.label.tolist() == want
        assert got.known.tolist() == known
        deep += sum(1 for v in want if v >= 2)
    assert deep >= 3, "too few chains matched twice: the test would not exercise levels > 1"


def test_truncated_response_marks_unknown_tail():
    model = tiny_target(seed=5)
    head = random_head(model, seed=5)
    tokens = torch.tensor([1, 2, 3, 4, 5, 6, 1, 2, 3])
    (feats, _), = target_features(model, [tokens.tolist()])
    got = sequence_labels(head, tokens, feats, 2, 4, complete=False)
    assert got.known.tolist() == [4, 4, 3, 2, 1]
    assert (got.label <= got.known).all()
    with pytest.raises(ValueError, match="k must be"):
        sequence_labels(head, tokens, feats, 2, 0)


def test_collect_shards_resume_and_stale_head(tmp_path):
    model = tiny_target(seed=6)
    head = random_head(model, seed=6)
    seqs = greedy_sequences(model, 7, 6, max_new_tokens=16)
    chats = [TokenisedChat(t[:p], t[p:]) for t, p, _ in seqs]
    shards = write_shards(model, chats, tmp_path / "features", shard_size=3, batch_size=2,
                          progress=False)
    paths, info = collect(head, shards, tmp_path / "labels", 5, [EOS], progress=False)
    assert info["new_positions"] == info["positions"] > 0
    labels = load_labels(paths)
    assert labels.k == 5 and labels.label.numel() == info["positions"]
    assert labels.conv.unique().tolist() == list(range(len(chats)))
    # against the per-sequence function (bf16 features, as stored)
    first = labels.conv == 4
    t = torch.tensor(seqs[4][0])
    (feats, _), = target_features(model, [t.tolist()])
    want = sequence_labels(head, t, feats.to(torch.bfloat16).float(), seqs[4][1] - 1, 5,
                           complete=seqs[4][2])
    assert labels.label[first].tolist() == want.label.tolist()
    assert labels.token[first].tolist() == t[want.positions].tolist()
    # resume: nothing new; a smaller k reuses the shards; another head or a larger k redoes them
    _, again = collect(head, shards, tmp_path / "labels", 5, [EOS], progress=False)
    assert again["new_positions"] == 0
    _, smaller = collect(head, shards, tmp_path / "labels", 3, [EOS], progress=False)
    assert smaller["new_positions"] == 0
    _, other = collect(random_head(model, seed=7), shards, tmp_path / "labels", 5, [EOS],
                       progress=False)
    assert other["new_positions"] == info["positions"]
    hist = load_labels(paths).histogram(3)
    assert len(hist) == 4 and sum(hist) <= info["positions"]
