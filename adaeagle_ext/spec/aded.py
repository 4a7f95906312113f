"""``aded``: ADED's training-free tri-gram draft trees (arXiv 2407.12021).

Each step, every active request gets a tree of at most ``max_nodes`` nodes (root included) from
``ops.aded_draft``: an MCTS search (PUCT, rollouts, visit-count path ranking) over the tri-gram
table, started from the request's last two tokens (the last one, the pending token, is the
root). Before each search the tokens committed since the last one are appended to the request's
context and the tri-grams of its last 16 tokens are reinforced (+0.04, capped at 3.0) in a
per-generation overlay (``AdedDrafter``); the stored table is never modified.

Tables (``table=`` argument or ``aded:table=...`` / ``aded:path=...``):

- ``"auto"`` (default): the shipped table when the target is the default model (same vocabulary
  size and embedding fingerprint), else none;
- ``"default"``: the shipped table for any target with its vocabulary size (e.g. another model
  with the SmolLM2 tokenizer);
- a file path (built with ``python -m adaeagle_ext.train.build_trigram``) or a TrigramTable;
- ``"none"``: no table; the prompt's tri-grams seed the overlay, then the generation's own.

Verification: greedy through the base ``verify_greedy``; at T > 0 through ``verify_sampling``'s
top-k rule (``VERIFY_TOPK``), exact because the tree is a deterministic function of the committed
tokens (the search seed depends on the context length only) and siblings carry distinct tokens
(checked, duplicates dropped). ADED's own approximate nucleus rule is not used.

Spec string (any subset, comma-separated): ``table=auto|default|none|PATH`` (``path=PATH``),
``iterations=150``, ``max_nodes=2``, ``c1=32``, ``c2=8``, ``max_len=4``, ``top_paths=24``,
``seed=0``, ``min_value=0``. The defaults are ADED's (``AdedDrafter``) except ``max_nodes``:
ADED's 64-node trees suit a GPU, where a verify pass costs the same for any tree size; on the
2-core CPU each verify row costs 15-35% of a one-token pass, and 2 nodes (root + 1 draft) decode
fastest (Spec-Bench, 30 questions, bf16, session 8: 1.07x ``ar`` at 2 nodes, 1.02x at 3; before
the one-token step got cheaper, 3 nodes led; benchmarks/README.md). A path holding a comma
cannot go in the spec string: pass ``table=`` to ``Aded`` instead.

``aded-conf`` (this project's, not ADED's) adapts the tree to each step: the search's tree is
cut to the drafts the tri-gram table backs, keeping a node only when the value of its edge
(grandparent, parent -> node; the stored probability, or the online overlay's reinforced value)
is at least ``min_value``. A step with no such node verifies its root alone, a plain one-token
step. Defaults ``max_nodes=3``, ``min_value=0.3``, chosen on training prompts (first drafts
valued below 0.3 were accepted 0-19% of the time, those above 36-99%; benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from adaeagle_ext import ops
from adaeagle_ext.drafters.aded import DEFAULT_TABLE_PATH, AdedDrafter
from adaeagle_ext.drafters.eagle_head import embedding_fingerprint
from adaeagle_ext.drafters.trigram import TrigramTable
from adaeagle_ext.spec.eagle_base import csr_tree, depth_caps
from adaeagle_ext.spec.strategy import (
    Acceptance,
    DraftTree,
    StepState,
    Strategy,
    register,
    verify_sampling_trees,
)

# ``embedding_fingerprint`` of the default model (SmolLM2-135M-Instruct Q4_1): 14150.4129 in
# float32, 14150.3767 in bfloat16 (measured when the shipped table was wired in).
DEFAULT_TARGET_FINGERPRINT = 14150.412935256958
FINGERPRINT_REL_TOL = 1e-3
DEFAULT_VOCAB_SIZE = 49152

DEFAULT_MAX_NODES = 2  # tuned on the 2-core CPU (see the module docstring); ADED's is 64
SEARCH_DEFAULTS = dict(iterations=150, max_nodes=DEFAULT_MAX_NODES, c1=32.0, c2=8.0,
                       max_len=4, top_paths=24, seed=0)
# Drafts kept after the search: a node only when the tri-gram value of its edge (grandparent,
# parent -> node, as the search saw it) is at least ``min_value`` (0: every node, ADED's rule).
PRUNE_DEFAULTS = dict(min_value=0.0)
CONF_DEFAULTS = dict(max_nodes=3, min_value=0.3)  # aded-conf's, tuned on training prompts
_OPTION_KEYS = (*SEARCH_DEFAULTS, *PRUNE_DEFAULTS)
_INT_KEYS = ("iterations", "max_nodes", "max_len", "top_paths", "seed")
_TABLE_WORDS = ("auto", "default", "none")
_LOADED: dict[str, TrigramTable] = {}


def parse_spec(spec: str | None) -> dict:
    """``"table=none,iterations=100,max_nodes=32,c1=16"`` -> keyword arguments of ``Aded``."""
    out: dict = {}
    for part in (spec or "").split(","):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = "table" if key == "path" else key
        if not value or (key not in _OPTION_KEYS and key != "table"):
            raise ValueError(f"aded spec {spec!r}: expected table= (or path=), "
                             f"{'=, '.join(_OPTION_KEYS)}=")
        try:
            out[key] = (value if key == "table" else
                        int(value) if key in _INT_KEYS else float(value))
        except ValueError:
            raise ValueError(f"aded spec {spec!r}: {key} needs a number, got {value!r}") from None
    return out


def load_table(path: str | Path) -> TrigramTable:
    """A tri-gram file, loaded once per process (memory-mapped, checksum verified)."""
    key = str(Path(path).resolve())
    if key not in _LOADED:
        _LOADED[key] = TrigramTable.load(path)
    return _LOADED[key]


def is_default_target(model) -> bool:
    """True when ``model`` is the default model (vocabulary size and embedding fingerprint)."""
    if model.config.vocab_size != DEFAULT_VOCAB_SIZE:
        return False
    got = embedding_fingerprint(model)
    return abs(got - DEFAULT_TARGET_FINGERPRINT) <= FINGERPRINT_REL_TOL * DEFAULT_TARGET_FINGERPRINT


def distinct_sibling_mask(parents: list[int], tokens: list[int]) -> list[bool]:
    """Nodes to keep so that no two siblings share a token: a node is dropped when an earlier
    sibling has its token or its parent was dropped (parents in topological order)."""
    keep = [True] * len(parents)
    seen: set[tuple[int, int]] = set()
    for i in range(1, len(parents)):
        p = parents[i]
        if not keep[p] or (p, tokens[i]) in seen:
            keep[i] = False
        else:
            seen.add((p, tokens[i]))
    return keep


def prune_by_value(nodes: list[tuple[int, int]], root: int, before_root: int | None,
                   value: Callable[[int, int, int], float], min_value: float
                   ) -> list[tuple[int, int]]:
    """The nodes (token, parent id; the root is id 0, parents before children) whose edge
    value ``value(grandparent token, parent token, token)`` is at least ``min_value`` and whose
    parent is kept, renumbered. ``before_root`` is the token before the root (None: the first
    level is kept whatever its value, as there is no tri-gram to score it)."""
    token_of = {0: root}
    parent_token_of = {0: before_root}
    new_id = {0: 0}
    kept: list[tuple[int, int]] = []
    for i, (token, parent) in enumerate(nodes, start=1):
        if parent not in new_id:
            continue
        grand = parent_token_of[parent]
        if grand is not None and value(grand, token_of[parent], token) < min_value:
            continue
        new_id[i] = len(kept) + 1
        token_of[i], parent_token_of[i] = token, token_of[parent]
        kept.append((token, new_id[parent]))
    return kept


def prune_tree(parents: list[int], tokens: list[int], max_depth: int
               ) -> list[tuple[int, int]]:
    """The non-root nodes of a tree as (token, new parent id), siblings made distinct and
    nodes deeper than ``max_depth`` dropped (the root is new id 0)."""
    keep = distinct_sibling_mask(parents, tokens)
    depth = [0] * len(parents)
    new_id = {0: 0}
    nodes: list[tuple[int, int]] = []
    for i in range(1, len(parents)):
        p = parents[i]
        depth[i] = depth[p] + 1
        if keep[i] and depth[i] <= max_depth and p in new_id:
            new_id[i] = len(nodes) + 1
            nodes.append((tokens[i], new_id[p]))
    return nodes


@register
class Aded(Strategy):
    """ADED tri-gram draft trees; see the module docstring for the options."""

    name = "aded"
    search_defaults = {**SEARCH_DEFAULTS, **PRUNE_DEFAULTS}

    def __init__(self, spec: str | None = None, table: TrigramTable | str | Path | None = None,
                 **search):
        opts = parse_spec(spec)
        for key in search:
            if key not in _OPTION_KEYS:
                raise ValueError(f"aded: unknown option {key!r}; expected table, "
                                 f"{', '.join(_OPTION_KEYS)}")
        self.search = {**self.search_defaults,
                       **{k: v for k, v in opts.items() if k != "table"},
                       **{k: v for k, v in search.items() if v is not None}}
        self.min_value = float(self.search.pop("min_value"))
        if not self.min_value >= 0.0:
            raise ValueError(f"aded min_value must be >= 0, got {self.min_value}")
        s = self.search
        if not 2 <= s["max_nodes"] <= ops.MAX_TREE_NODES:
            raise ValueError(f"aded max_nodes must be in [2, {ops.MAX_TREE_NODES}], got "
                             f"{s['max_nodes']}")
        if s["iterations"] < 1 or s["max_len"] < 2 or s["top_paths"] < 1:
            raise ValueError(f"aded needs iterations >= 1, max_len >= 2 and top_paths >= 1, "
                             f"got {s['iterations']}, {s['max_len']}, {s['top_paths']}")
        if s["c2"] <= 0:
            raise ValueError(f"aded c2 must be > 0, got {s['c2']}")
        self.max_tree_nodes = int(s["max_nodes"])
        table = opts.get("table") if table is None else table
        self.table_arg: TrigramTable | str = "auto" if table is None else table
        if isinstance(self.table_arg, Path) or (isinstance(self.table_arg, str)
                                                and self.table_arg not in _TABLE_WORDS):
            self.table_arg = load_table(self.table_arg)  # a bad file fails here, early
        self.table: TrigramTable | None = None

    def resolve_table(self, model) -> TrigramTable | None:
        """The table this target drafts from (None: prompt and output only)."""
        arg = self.table_arg
        if arg == "none":
            return None
        if arg in ("auto", "default"):
            if arg == "auto" and not is_default_target(model):
                return None
            if not DEFAULT_TABLE_PATH.is_file():
                if arg == "auto":
                    return None
                raise ValueError(f"aded table=default: no table ships at {DEFAULT_TABLE_PATH}")
            arg = load_table(DEFAULT_TABLE_PATH)
        if arg.vocab_size != model.config.vocab_size:
            raise ValueError(f"aded: the tri-gram table was built for a vocabulary of "
                             f"{arg.vocab_size} tokens, the model has {model.config.vocab_size}")
        return arg

    def setup(self, model, batch: int) -> None:
        self.table = self.resolve_table(model)
        self.vocab_size = model.config.vocab_size
        s = self.search
        self.drafters = [AdedDrafter(self.table, self.vocab_size, iterations=s["iterations"],
                                     max_len=s["max_len"], top_paths=s["top_paths"],
                                     max_nodes=s["max_nodes"], c1=s["c1"], c2=s["c2"],
                                     seed=s["seed"]) for _ in range(batch)]
        self.started = [False] * batch

    def propose(self, state: StepState) -> DraftTree:
        act = state.active.nonzero().flatten().tolist()
        caps = depth_caps(state, act, self.max_tree_nodes - 1)
        nodes = []
        for b, cap in zip(act, caps, strict=True):
            drafter, history = self.drafters[b], state.history[b]
            if not self.started[b]:
                drafter.reset(history)
                self.started[b] = True
            elif len(history) > len(drafter.context):
                drafter.observe(history[len(drafter.context):])
            if cap == 0:
                nodes.append([])
                continue
            parents, tokens = drafter.propose()
            kept = prune_tree(parents.tolist(), tokens.tolist(), cap)
            if self.min_value > 0.0:
                context = drafter.context
                kept = prune_by_value(kept, context[-1],
                                      context[-2] if len(context) >= 2 else None,
                                      drafter.online.value, self.min_value)
            nodes.append(kept)
        return csr_tree(act, state.roots.numel(), state.roots, nodes)

    def verify(self, state: StepState, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        if state.sampling.greedy:
            return super().verify(state, tree, logits)
        return verify_sampling_trees(state, tree, logits, ops.VERIFY_TOPK, None,
                                     self.max_tree_nodes - 1)


@register
class AdedConf(Aded):
    """ADED's trees cut to the drafts the tri-gram table backs (``min_value``); see the module
    docstring. Takes every ``aded`` option."""

    name = "aded-conf"
    search_defaults = {**SEARCH_DEFAULTS, **CONF_DEFAULTS}


def tree_has_distinct_siblings(parents: torch.Tensor, tokens: torch.Tensor) -> bool:
    """True when no two children of one node carry the same token (parents int32 [T],
    tokens int64 [T] of one tree)."""
    pairs = np.stack([parents.numpy().astype(np.int64)[1:], tokens.numpy()[1:]])
    return np.unique(pairs, axis=1).shape[1] == pairs.shape[1]
