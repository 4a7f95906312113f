"""Plain autoregressive decoding as a strategy: the draft tree is only the pending root."""

from __future__ import annotations

import torch

from adaeagle_ext.spec.sampling import sample
from adaeagle_ext.spec.strategy import Acceptance, DraftTree, StepState, Strategy, register


@register
class AutoRegressive(Strategy):
    name = "ar"
    max_tree_nodes = 1

    def propose(self, state: StepState) -> DraftTree:
        sizes = state.active.to(torch.int64)
        indptr = torch.zeros(sizes.numel() + 1, dtype=torch.int32)
        indptr[1:] = torch.cumsum(sizes, 0)
        tokens = state.roots[state.active]
        parents = torch.full((tokens.numel(),), -1, dtype=torch.int32)
        return DraftTree(tokens, parents, indptr, is_chain=True)

    def verify(self, state: StepState, tree: DraftTree, logits: torch.Tensor) -> Acceptance:
        batch = state.roots.numel()
        out = torch.full((batch, 1), -1, dtype=torch.int64)
        for row, b in enumerate(state.active.nonzero().flatten().tolist()):
            out[b, 0] = sample(logits[row], state.sampling, state.generators[b])
        return Acceptance(torch.zeros(batch, 1, dtype=torch.int32),
                          torch.zeros(batch, dtype=torch.int32), out)
