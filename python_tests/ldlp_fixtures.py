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


def spread_ldlp(target, seed: int = 0, k_max: int = 4, width: int = 32,
                mean: float | None = None, spread: float | None = None) -> tuple[LDLP, int]:
    """(module, k_max): an untrained LDLP for ``target`` whose final layer is rescaled so the
    raw output over random inputs has mean ``mean`` (default k_max / 2) and standard deviation
    ``spread`` (default 0.8 k_max): predictions hit 0, k_max and the lengths between."""
    g = torch.Generator().manual_seed(seed)
    h = target.config.hidden_size
    net = LDLP(h, width)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(p.shape[-1], 1) ** 0.5))
        y = net(torch.randn(256, h, generator=g), torch.randn(256, h, generator=g))
        scale = (0.8 * k_max if spread is None else spread) / y.std()
        net.head.weight.mul_(scale)
        net.head.bias.copy_((net.head.bias - y.mean()) * scale
                            + (k_max / 2 if mean is None else mean))
    return net.requires_grad_(False).eval(), k_max


def fitted_head(target, prompts: list[list[int]], seed: int = 0, new_tokens: int = 48,
                steps: int = 150):
    """An EAGLE head fitted in a second or two to ``target``'s greedy continuations of
    ``prompts`` (so long drafts are accepted on them and on similar text): EOS, length limits
    and k_max-long accepted chains all get exercised."""
    from adaeagle_ext.drafters.eagle_head import EagleHead
    from adaeagle_ext.spec.generate import generate_ids
    from adaeagle_ext.train.features import target_features

    outs, _ = generate_ids(target, prompts, max_new_tokens=new_tokens)
    seqs = [p + o.token_ids for p, o in zip(prompts, outs, strict=True)]
    length = min(len(s) for s in seqs)
    seqs = [s[:length] for s in seqs]
    feats = torch.stack([f for f, _ in target_features(target, seqs)]).float()
    toks = torch.tensor(seqs)
    torch.manual_seed(seed)
    head = EagleHead.for_target(target, seed=seed)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    w = head.head_weight.float()
    for _ in range(steps):
        # pair i = (f_i, t_{i+1}) predicts f_{i+1}, whose greedy token is t_{i+2}
        pred = head.forward_train(toks[:, 1:-1], feats[:, :-2])
        loss = torch.nn.functional.cross_entropy((pred.float() @ w.T).flatten(0, 1),
                                                 toks[:, 2:].flatten())
        loss = loss + (pred.float() - feats[:, 1:-1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.requires_grad_(False).eval()
