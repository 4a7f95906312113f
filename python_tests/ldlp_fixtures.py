"""Random LDLP modules whose predictions spread over 0..k_max on a tiny target."""

from __future__ import annotations

import torch
from torch import nn

from adaeagle_ext.drafters.ldlp import LDLP
from adaeagle_ext.models.tree_inputs import chain_inputs
from adaeagle_ext.spec.generate import generate_ids


def target_pairs(target, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings [n, H], final-normed hidden [n, H]) along 8 random tokens and the target's
    greedy continuation: inputs like the ones the LDLP sees while decoding."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, target.config.vocab_size, (8,), generator=g).tolist()
    (out,), _ = generate_ids(target, [prompt], max_new_tokens=n - 8)
    tokens = torch.tensor(prompt + out.token_ids)
    n = tokens.numel()
    cache = target.new_cache(1, n)
    pos, indptr, bits = chain_inputs(torch.tensor([n]), torch.zeros(1, dtype=torch.int32))
    _, hidden = target(tokens, pos, indptr, bits, torch.zeros(1, dtype=torch.int32), cache)
    with torch.no_grad():
        emb = target.model.embed_tokens(tokens)
    return emb.float(), hidden.float()


def random_ldlp(target, k_max: int, seed: int = 0, width: int = 16,
                shift: float | None = None) -> tuple[LDLP, int]:
    """(module, k_max): random weights, the output layer rescaled so the raw outputs on
    ``target_pairs`` map their 10%..90% quantiles onto [-0.5, k_max + 0.5] (0 and k_max
    each cover at least a tenth of the inputs), then moved by
    ``shift`` when given (e.g. -100: always 0; +100: always k_max)."""
    torch.manual_seed(seed)
    module = LDLP(target.config.hidden_size, width=width)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
        emb, hidden = target_pairs(target, seed=seed)
        y = module(emb, hidden)
        lo, hi = torch.quantile(y, torch.tensor([0.1, 0.9])).tolist()
        a = (k_max + 1.0) / max(hi - lo, 1e-6)
        head: nn.Linear = module.head
        head.weight.mul_(a)
        head.bias.copy_(a * (head.bias - lo) - 0.5 + (shift or 0.0))
    return module.requires_grad_(False).eval(), k_max
