"""What every EAGLE-head strategy shares: the head, its KV cache, and level-by-level drafting.

Alignment (EAGLE-1): draft-cache row i holds pair (target feature f_i, token t_{i+1}) at
position i. After a target step, the features of the accepted path (root + accepted drafts)
become pending pairs; ``refresh`` runs them through the head (so the draft KV always comes
from target features, never from the head's own guesses) and returns the predicted feature
that proposes the root's children. Tree nodes are then fed level by level with ``feed``; their
K/V sit past the accepted rows and are dropped at the next step.

Subclasses implement ``propose`` with ``refresh`` / ``feed`` / ``draft_logits`` and record
``self.draft_q`` (per-node proposal rows for sampling verification, or None).
"""

from __future__ import annotations

from pathlib import Path

import torch

from adaeagle_ext import ops
from adaeagle_ext.drafters.eagle_head import EagleHead
from adaeagle_ext.models.tree_inputs import MAX_TREE_NODES
from adaeagle_ext.spec.sampling import target_probs
from adaeagle_ext.spec.strategy import (
    Acceptance,
    DraftTree,
    StepState,
    Strategy,
    verify_sampling_trees,
)

# The trained head shipped for the default model (see eagle_head.md beside it).
DEFAULT_HEAD_PATH = (Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-instruct"
                     / "eagle_head.safetensors")
_LOADED: dict[tuple, EagleHead] = {}


def resolve_head(head, target) -> EagleHead:
    """An EagleHead bound to ``target``: ``head`` itself, a file path, or (None) the shipped
    head when it was trained for ``target``. Loaded files are cached per target."""
    if isinstance(head, EagleHead):
        return head if head.is_bound_to(target) else head.bind(target)
    path = Path(head) if head is not None else DEFAULT_HEAD_PATH
    key = (str(path.resolve()), target.dtype)
    cached = _LOADED.get(key)
    if cached is not None and cached.is_bound_to(target):
        return cached
    if head is None and not path.is_file():
        raise ValueError("no EAGLE head ships for this target; pass head=<path to an "
                         "eagle_head.safetensors> (train one with `adaeagle train-head`)")
    loaded = EagleHead.load(path)
    if head is None and not loaded.matches(target):
        raise ValueError(f"the shipped EAGLE head ({path}) was trained for a different "
                         "target; pass head=<path> (train one with `adaeagle train-head`)")
    _LOADED[key] = loaded.bind(target)  # one bound head per file and dtype
    return _LOADED[key]


def _signed(bits: int) -> int:
    return bits - (1 << 64) if bits >= 1 << 63 else bits


# Row i of a chain sees nodes 0..i: the low i + 1 bits (as signed int64).
_CHAIN_BITS = [_signed((1 << (i + 1)) - 1) for i in range(MAX_TREE_NODES)]


class EagleBase(Strategy):
    """Shared state of one generate call. ``head``: EagleHead, path, or None (shipped head)."""

    def __init__(self, head: EagleHead | str | Path | None = None):
        self.head_arg = head
        self.head: EagleHead | None = None
        self.draft_q: torch.Tensor | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def setup(self, model, batch: int) -> None:
        self.head = resolve_head(self.head_arg, model)
        self.vocab_size = model.config.vocab_size
        self.batch = batch
        self.cache = None
        self.stable = [0] * batch  # draft-cache rows holding pairs of accepted tokens
        self.pending: list[list[torch.Tensor]] = [[] for _ in range(batch)]

    def observe_prefill(self, tokens, hidden, tree_indptr) -> None:
        ptr = tree_indptr.tolist()
        for b in range(self.batch):
            if ptr[b + 1] > ptr[b]:
                self.pending[b].append(hidden[ptr[b]:ptr[b + 1]])

    def observe(self, state, tree, acceptance, hidden) -> None:
        ptr = tree.tree_indptr.tolist()
        for b in state.active.nonzero().flatten().tolist():
            n = int(acceptance.accept_len[b]) + 1
            rows = acceptance.accept_local[b, :n].to(torch.int64) + ptr[b]
            self.pending[b].append(hidden[rows])

    # --- drafting -------------------------------------------------------------------------

    def reserve(self, max_seq_len: int) -> None:
        """The draft cache, sized once: ``refresh`` needs at most the target's committed rows
        plus one tree and its root, and the target never holds more than ``max_seq_len``."""
        self.cache = self.head.new_cache(self.batch, max_seq_len + MAX_TREE_NODES + 1)

    def _ensure_cache(self, rows: int) -> None:
        """Grows the draft cache to ``rows`` (a no-op after ``reserve`` in ``generate_ids``;
        kept for callers that drive a strategy without it)."""
        old = self.cache
        if old is not None and old.max_seq_len >= rows:
            return
        size = max(rows, 2 * old.max_seq_len if old is not None else rows + 2 * MAX_TREE_NODES)
        self.cache = self.head.new_cache(self.batch, size)
        if old is not None:
            self.cache.buf[:, :, :, :old.max_seq_len] = old.buf

    @torch.no_grad()
    def refresh(self, state: StepState) -> torch.Tensor:
        """Run the pending pairs of the active requests; reset the fed-node lists.

        Returns:
            [A, H] the predicted feature after each active request's root (A = active count,
            in request order); it proposes the root's children.
        """
        act = state.active.nonzero().flatten().tolist()
        prefix = state.prefix_lens.tolist()
        self._ensure_cache(max(prefix) + MAX_TREE_NODES + 1)
        feats, toks = {}, {}
        for b in act:
            pend = self.pending[b]
            f = (pend[0] if len(pend) == 1 else torch.cat(pend)) if pend else None
            m = prefix[b] - self.stable[b]
            if f is None or f.shape[0] != m or m < 1:
                raise RuntimeError(f"EAGLE draft state of request {b} is out of step with the "
                                   "target cache")
            feats[b] = f
            toks[b] = state.history[b][self.stable[b] + 1: prefix[b] + 1]
            self.pending[b] = []
        # Chunks of <= 64 pairs per request, all requests in one head call per chunk.
        last: dict[int, torch.Tensor] = {}
        done = dict.fromkeys(act, 0)
        while any(done[b] < feats[b].shape[0] for b in act):
            indptr, start, positions, bits, tokens, f_parts = [0], [], [], [], [], []
            slot_req, rows = [], []
            ends = {}
            for b in range(self.batch):
                first = self.stable[b] + done.get(b, 0)
                start.append(first)
                size = min(MAX_TREE_NODES, feats[b].shape[0] - done[b]) if b in done else 0
                if size > 0:
                    positions.extend(range(first, first + size))
                    slot_req.extend([b] * size)
                    rows.extend(range(first, first + size))
                    bits.extend(_CHAIN_BITS[:size])
                    tokens.extend(toks[b][done[b]:done[b] + size])
                    f_parts.append(feats[b][done[b]:done[b] + size])
                    done[b] += size
                    if done[b] == feats[b].shape[0]:
                        ends[b] = indptr[-1] + size - 1
                indptr.append(indptr[-1] + size)
            f_in = f_parts[0] if len(f_parts) == 1 else torch.cat(f_parts)
            out = self.head.forward_tree(
                torch.tensor(tokens, dtype=torch.int64), f_in,
                torch.tensor(positions, dtype=torch.int64), self.cache,
                torch.tensor(start, dtype=torch.int32), torch.tensor(indptr, dtype=torch.int32),
                torch.tensor(bits, dtype=torch.int64),
                cache_slots=(torch.tensor(slot_req, dtype=torch.int64),
                             torch.tensor(rows, dtype=torch.int64)))
            for b, row in ends.items():
                last[b] = out[row]
        for b in act:
            self.stable[b] = prefix[b]
        self._stable_t = torch.tensor(self.stable, dtype=torch.int32)
        self._fed = [[] for _ in range(self.batch)]  # per request: (bits, depth) of fed nodes
        return torch.stack([last[b] for b in act])

    @torch.no_grad()
    def feed(self, req: list[int], parent: list[int], tokens: torch.Tensor,
             features: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Run one level of new draft nodes through the head.

        Args:
            req: request of each new node (M entries, any order).
            parent: the fed index (within its request, from an earlier ``feed``) of each new
                node's parent, or -1 for a child of the root.
            tokens: int64 [M] target token ids; features [M, H] the parents' predicted features.

        Returns:
            (predicted features [M, H], the fed index of each new node).
        """
        m = len(req)
        new_by_req: list[list[int]] = [[] for _ in range(self.batch)]
        for i, b in enumerate(req):
            new_by_req[b].append(i)
        sizes = [len(self._fed[b]) + len(new_by_req[b]) for b in range(self.batch)]
        if max(sizes) > MAX_TREE_NODES:
            raise ValueError(f"a draft tree feeds at most {MAX_TREE_NODES} nodes per step")
        indptr = [0]
        for s in sizes:
            indptr.append(indptr[-1] + s)
        bits = [0] * indptr[-1]
        positions = [0] * m
        new_index = [0] * m
        fed_index = [0] * m
        rows = [0] * m
        for b in range(self.batch):
            fed = self._fed[b]
            for j, (bj, _) in enumerate(fed):
                bits[indptr[b] + j] = _signed(bj)
            for i in new_by_req[b]:
                j = len(fed)
                p = parent[i]
                pb, pd = (0, 0) if p < 0 else fed[p]
                mine = pb | (1 << j)
                fed.append((mine, pd + 1))
                bits[indptr[b] + j] = _signed(mine)
                positions[i] = self.stable[b] + pd  # depth pd + 1 sits at stable + depth - 1
                new_index[i] = indptr[b] + j
                fed_index[i] = j
                rows[i] = self.stable[b] + j
        out = self.head.forward_tree(
            tokens, features, torch.tensor(positions, dtype=torch.int64), self.cache,
            self._stable_t, torch.tensor(indptr, dtype=torch.int32),
            torch.tensor(bits, dtype=torch.int64), torch.tensor(new_index, dtype=torch.int64),
            cache_slots=(torch.tensor(req, dtype=torch.int64),
                         torch.tensor(rows, dtype=torch.int64)))
        return out, fed_index

    @torch.no_grad()
    def draft_logits(self, features: torch.Tensor) -> torch.Tensor:
        """float32 [M, Nd] draft logits (draft-vocabulary order)."""
        return self.head.logits(features)

    def full_vocab_probs(self, logits: torch.Tensor, state: StepState) -> torch.Tensor:
        """float32 [M, V]: the sampling proposal q over the target vocabulary (the user's
        temperature / top-k / top-p applied to the draft logits; zero outside the draft vocab)."""
        if not self.head.reduced:
            return target_probs(logits, state.sampling)
        full = logits.new_full((logits.shape[0], self.vocab_size), float("-inf"))
        full[:, self.head.draft_vocab] = logits
        return target_probs(full, state.sampling)

    # --- verification ---------------------------------------------------------------------

    sampling_mode = ops.VERIFY_CHAIN

    def verify(self, state: StepState, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        if state.sampling.greedy:
            return super().verify(state, tree, logits)
        q = None if self.sampling_mode == ops.VERIFY_TOPK else self.draft_q
        return verify_sampling_trees(state, tree, logits, self.sampling_mode, q,
                                     self.max_tree_nodes - 1)


def depth_caps(state: StepState, act: list[int], most: int) -> list[int]:
    """Per active request, the most drafts worth proposing: ``most``, fewer near
    ``max_new_tokens`` (a step commits at most drafts + 1 tokens)."""
    if state.remaining is None:
        return [most] * len(act)
    return [max(0, min(most, int(state.remaining[b]) - 1)) for b in act]


def csr_tree(act: list[int], batch: int, roots: torch.Tensor, nodes: list[list[tuple[int, int]]],
             is_chain: bool = False) -> DraftTree:
    """A DraftTree from per-active-request node lists of (token, parent local id), root
    excluded (local ids start at 1; the root is local 0)."""
    sizes = torch.zeros(batch, dtype=torch.int64)
    tokens, parents = [], []
    for b, ns in zip(act, nodes, strict=True):
        sizes[b] = len(ns) + 1
        tokens.append(int(roots[b]))
        parents.append(-1)
        for tok, par in ns:
            tokens.append(tok)
            parents.append(par)
    indptr = torch.zeros(batch + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(sizes, 0)
    return DraftTree(torch.tensor(tokens, dtype=torch.int64),
                     torch.tensor(parents, dtype=torch.int32), indptr, is_chain)


def rows_with_roots(qrows: list[list[torch.Tensor]], vocab: int) -> torch.Tensor:
    """[N, V] proposal rows in CSR node order: a zero row for each request's root, then the
    rows of its nodes (``qrows[i]``, local order)."""
    zero = torch.zeros(1, vocab)
    parts = []
    for rows in qrows:
        parts.append(zero)
        if rows:
            parts.append(torch.stack(rows))
    return torch.cat(parts)
