"""The LDLP in the decoding loop: the next draft length from the verification pass's outputs.

After each target step the predictor reads, per active request, the last accepted token (the
one whose target feature predicted the bonus token) and the target's final-normed hidden state
at it; both come out of the verify pass, so no extra forward runs. After the prefill the same
holds for the prompt's last token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adaeagle_ext import ops
from adaeagle_ext.drafters.eagle_head import embedding_fingerprint
from adaeagle_ext.drafters.ldlp import LDLP

# The LDLP shipped for the default model (see ldlp.md beside it).
DEFAULT_LDLP_PATH = (Path(__file__).resolve().parents[1] / "assets" / "smollm2-135m-instruct"
                     / "ldlp.safetensors")


_LOADED: dict[tuple, tuple[LDLP, dict]] = {}


def resolve_ldlp(ldlp, target) -> tuple[LDLP, int]:
    """(module, k_max it was trained with) for ``target``: an ``LDLP`` module (k_max then
    taken from ``module.k_max`` or 8), a ``(module, k_max)`` pair, a file path, or None for the
    shipped file when it was trained for ``target``. Loaded files are cached per file and
    target dtype (the same module object comes back); every call checks it fits ``target``.

    Raises:
        ValueError: no LDLP ships for ``target``, or the file was trained for another target.
    """
    if isinstance(ldlp, tuple):
        module, k_max = ldlp
        return module, int(k_max)
    if isinstance(ldlp, LDLP):
        return ldlp, int(getattr(ldlp, "k_max", 8))
    path = Path(ldlp) if ldlp is not None else DEFAULT_LDLP_PATH
    if ldlp is None and not path.is_file():
        raise ValueError("no LDLP ships for this target; pass ldlp=<path to an "
                         "ldlp.safetensors> (train one with `adaeagle train-ldlp`)")
    key = (str(path.resolve()), target.dtype)
    if key not in _LOADED:
        _LOADED[key] = LDLP.load(path)
    module, config = _LOADED[key]
    hidden = target.config.hidden_size
    if ldlp is not None and config["hidden_size"] != hidden:
        raise ValueError(f"{path}: LDLP was trained for hidden size {config['hidden_size']}, "
                         f"the target has {hidden}")
    fp = config.get("target_fingerprint")
    foreign = config["hidden_size"] != hidden or (
        fp is not None
        and abs(embedding_fingerprint(target) - fp) > 1e-3 * max(abs(fp), 1e-12))
    if foreign and ldlp is None:
        raise ValueError(f"no LDLP ships for this target (the shipped {path.name} was trained "
                         "for another model); pass ldlp=<path to an ldlp.safetensors> (train "
                         "one with `adaeagle train-ldlp`)")
    if foreign:
        raise ValueError(f"{path}: this LDLP was trained for a different target "
                         "(embedding fingerprint differs)")
    return module, int(config["k_max"])


class DraftLengthPredictor:
    """Per-request next draft lengths, refreshed from every prefill / verification pass.

    ``lengths[b]`` holds request b's prediction for its next draft (``k_max`` until the first
    observation). Activations are cast to the LDLP's weight dtype for the fused op.
    """

    def __init__(self, module: LDLP, k_max: int, target, batch: int):
        self.module = module
        self.k_max = k_max
        self.target = target
        self.dtype = module.proj.weight.dtype
        self.lengths = [k_max] * batch
        self.raw = [float("nan")] * batch

    def update(self, rows: list[int], tokens: torch.Tensor, hidden: torch.Tensor) -> None:
        """rows: the requests observed; tokens int64 [R] their last accepted tokens; hidden
        [R, H] the target's final-normed hidden state at those tokens."""
        if not rows:
            return
        with torch.no_grad():
            emb = self.target.model.embed_tokens(tokens).to(self.dtype).contiguous()
            got = ops.ldlp_mlp(emb, hidden.to(self.dtype).contiguous(), self.module.weights(),
                               self.k_max,
                               self.module.eps, return_raw=True)
        for b, k, y in zip(rows, got.lengths.tolist(), got.raw.tolist(), strict=True):
            self.lengths[b] = k
            self.raw[b] = y

    def observe_prefill(self, tokens: torch.Tensor, hidden: torch.Tensor,
                        tree_indptr: torch.Tensor) -> None:
        """One prefill chunk (CSR over the batch): each request's last token in it. Chunks come
        in order, so the prompt's last token has the final word."""
        sizes = tree_indptr[1:] - tree_indptr[:-1]
        rows = (sizes > 0).nonzero().flatten()
        idx = tree_indptr[1:].to(torch.int64)[rows] - 1
        self.update(rows.tolist(), tokens[idx], hidden[idx])

    def observe(self, active_rows: list[int], tree_tokens: torch.Tensor,
                tree_indptr: torch.Tensor, accept_local: torch.Tensor, accept_len: torch.Tensor,
                hidden: torch.Tensor) -> None:
        """After verification: each active request's last accepted node (root if none)."""
        if not active_rows:
            return
        rows = torch.tensor(active_rows, dtype=torch.int64)
        last = accept_local[rows, accept_len[rows].to(torch.int64)].to(torch.int64)
        idx = tree_indptr[rows].to(torch.int64) + last
        self.update(active_rows, tree_tokens[idx], hidden[idx])
