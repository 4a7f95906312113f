"""ADED: the training-free tri-gram drafter (arXiv 2407.12021).

Per generation::

    drafter = AdedDrafter(TrigramTable.load(path, vocab_size))   # or AdedDrafter(None, vocab)
    drafter.reset(prompt_ids)
    while generating:
        parents, tokens = drafter.propose()     # tree rooted at the last committed token
        ... verify the tree, commit the accepted drafts + the bonus token ...
        drafter.observe(committed_ids)           # the new tokens, in order

``propose`` returns a draft tree in the project's convention (parents int32 [T] in topological
order, root 0 with parent -1; tokens int64 [T], tokens[0] = the last committed token), ready for
``ops.build_tree`` with ``tree_indptr = [0, T]``. The stored table is never modified: online
adaptation lives in a per-generation overlay (``OnlineTrigrams``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from adaeagle_ext import ops
from adaeagle_ext.drafters.trigram import TrigramTable

ADED_FALLBACK_TOKEN = 100  # the dummy draft ADED verifies when nothing is retrieved
# The shipped table of the default model (see trigram.md beside it).
DEFAULT_TABLE_PATH = (Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-instruct"
                      / "trigram.bin")


def load_default_table(vocab_size: int | None = None) -> TrigramTable | None:
    """The shipped default-model table, or None when the package has none."""
    if not DEFAULT_TABLE_PATH.exists():
        return None
    return TrigramTable.load(DEFAULT_TABLE_PATH, vocab_size=vocab_size)


class OnlineTrigrams:
    """ADED's online reinforcement as an overlay over a stored table.

    ``reinforce(tokens)`` adds ``boost`` to every tri-gram occurrence among the last ``window``
    tokens, starting from the stored probability and capped at ``cap``, without renormalising.
    ``tensors()`` gives the overlay in the CSR layout ``aded_draft`` takes; its values replace
    the stored ones.
    """

    def __init__(self, table: TrigramTable, window: int = 16, boost: float = 0.04,
                 cap: float = 3.0):
        self.table = table
        self.window, self.boost, self.cap = window, boost, cap
        self.clear()

    def clear(self) -> None:
        # entries in creation order; _pos maps (bigram key, t3) to its index
        self._pos: dict[tuple[int, int], int] = {}
        self._keys: list[int] = []
        self._succ: list[int] = []
        self._vals: list[float] = []
        self._tensors: tuple[torch.Tensor, ...] | None = None

    def reinforce(self, tokens: Sequence[int], window: int | None = None) -> None:
        """Reinforces the tri-grams of the last ``window`` (default ``self.window``) tokens;
        ``window=0`` means all of them."""
        window = self.window if window is None else window
        tail = [int(t) for t in tokens[-window:]] if window else [int(t) for t in tokens]
        for t1, t2, t3 in zip(tail, tail[1:], tail[2:], strict=False):
            entry = ((t1 << 32) | t2, t3)
            pos = self._pos.get(entry)
            if pos is None:
                pos = self._pos[entry] = len(self._vals)
                self._keys.append(entry[0])
                self._succ.append(t3)
                self._vals.append(self.table.prob(t1, t2, t3))
            self._vals[pos] = min(self._vals[pos] + self.boost, self.cap)
        if len(tail) >= 3:
            self._tensors = None

    def value(self, t1: int, t2: int, t3: int) -> float:
        """The value the search sees for t3 after (t1, t2)."""
        pos = self._pos.get(((t1 << 32) | t2, t3))
        return self._vals[pos] if pos is not None else self.table.prob(t1, t2, t3)

    @property
    def rows(self) -> dict[int, dict[int, float]]:
        """{bigram key: {t3: value}} of the overlay (for inspection)."""
        rows: dict[int, dict[int, float]] = {}
        for (k, t3), pos in self._pos.items():
            rows.setdefault(k, {})[t3] = self._vals[pos]
        return rows

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys int64 [M], offsets int32 [M+1], succ int32 [E], vals float32 [E]): rows
        sorted by key, entries within a row by token."""
        if self._tensors is None:
            keys = np.array(self._keys, dtype=np.int64)
            succ = np.array(self._succ, dtype=np.int32)
            order = np.lexsort((succ, keys))
            keys, succ = keys[order], succ[order]
            vals = np.array(self._vals, dtype=np.float32)[order]
            row_keys, starts = np.unique(keys, return_index=True)
            offsets = np.r_[starts, keys.size].astype(np.int32)
            self._tensors = tuple(torch.from_numpy(a) for a in (row_keys, offsets, succ, vals))
        return self._tensors


class AdedDrafter:
    """Draft trees from a tri-gram table (or none) plus online adaptation, searched by MCTS.

    Args:
        table: the stored table; None drafts from the prompt and the generation only.
        vocab_size: required when ``table`` is None; else must match the table's.
        iterations, max_len, top_paths, max_nodes, c1, c2: the search (``ops.aded_draft``);
            ADED's values by default.
        window, boost, cap: online reinforcement (last 16 tokens, +0.04, capped at 3.0).
        prompt_window: tri-grams of the prompt reinforced by ``reset``: 16 reproduces ADED's
            first search call; 0 (default) takes the whole prompt, so the prompt's own phrases
            can be drafted (as prompt lookup does).
        fallback_token: the draft when nothing is retrieved (ADED's id 100, clamped to the
            vocabulary).
        seed: base seed; a call's seed also depends on the context length, so trees are
            reproducible and vary along the generation.
    """

    def __init__(self, table: TrigramTable | None, vocab_size: int | None = None, *,
                 iterations: int = 150, max_len: int = 4, top_paths: int = 24,
                 max_nodes: int = ops.MAX_TREE_NODES, c1: float = 32.0, c2: float = 8.0,
                 window: int = 16, boost: float = 0.04, cap: float = 3.0,
                 prompt_window: int = 0, fallback_token: int | None = None, seed: int = 0):
        if table is None:
            if vocab_size is None:
                raise ValueError("AdedDrafter needs vocab_size when no table is given")
            table = TrigramTable.empty(vocab_size)
        elif vocab_size is not None and vocab_size != table.vocab_size:
            raise ValueError(f"the tri-gram table was built for {table.vocab_size} tokens, "
                             f"the model has {vocab_size}")
        self.table = table
        self.vocab_size = table.vocab_size
        self.online = OnlineTrigrams(table, window, boost, cap)
        self.search = dict(iterations=iterations, max_len=max_len, top_paths=top_paths,
                           max_nodes=max_nodes, c1=c1, c2=c2)
        self.prompt_window = prompt_window
        self.fallback_token = (min(ADED_FALLBACK_TOKEN, self.vocab_size - 1)
                               if fallback_token is None else fallback_token)
        self.seed = seed
        self._table_tensors = table.tensors()
        self._out = ops.DraftTree(torch.empty(max_nodes, dtype=torch.int32),
                                  torch.empty(max_nodes, dtype=torch.int64),
                                  torch.empty(1, dtype=torch.int32))
        self.context: list[int] = []

    def reset(self, prompt_ids: Sequence[int] | torch.Tensor) -> None:
        """Starts a generation: clears the overlay, then reinforces the prompt's tri-grams."""
        self.context = [int(t) for t in prompt_ids]
        self.online.clear()
        self.online.reinforce(self.context, window=self.prompt_window)

    def observe(self, verified_ids: Sequence[int] | torch.Tensor) -> None:
        """Appends newly committed tokens (accepted drafts and the bonus token) and reinforces
        the tri-grams of the last ``window`` committed tokens."""
        self.context.extend(int(t) for t in verified_ids)
        self.online.reinforce(self.context)

    def propose(self, context_ids: Sequence[int] | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """A draft tree rooted at the last committed token.

        Args:
            context_ids: committed tokens (only the last two matter); default: the tokens given
                to ``reset`` and ``observe``.

        Returns:
            (parents int32 [T], tokens int64 [T]), 2 <= T <= max_nodes: parents in topological
            order with parents[0] = -1; tokens[0] is the root (last committed) token.
        """
        context = self.context if context_ids is None else context_ids
        if isinstance(context, torch.Tensor):
            tail = context[-2:].to(torch.int64)
        else:
            tail = torch.tensor([int(t) for t in context[-2:]], dtype=torch.int64)
        if tail.numel() == 0:
            raise ValueError("AdedDrafter.propose needs at least one committed token (the root)")
        seed = (self.seed * 1_000_003 + len(context)) & ((1 << 63) - 1)
        out = ops.aded_draft(self._table_tensors, self.online.tensors(), tail,
                             fallback_token=self.fallback_token, seed=seed, out=self._out,
                             **self.search)
        n = int(out.num_nodes[0])
        return out.parents[:n].clone(), out.tokens[:n].clone()
