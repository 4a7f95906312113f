"""``oracle``: an EAGLE chain that drafts exactly the tokens the target will accept (greedy only).

The upper bound of any draft-length rule on this head (AdaEAGLE's "EAGLE-Oracle"), for
reporting only. On its first step the strategy looks ahead: it runs ``ar`` internally on each
request's history to learn the target's greedy continuation; then each step the head drafts
its greedy chain (at most ``k_max``, default 8; ``oracle:k_max=12``) and keeps tokens while they
match that continuation, so every drafted token is accepted and none is wasted. If a request
leaves the known continuation (possible only where the runtime is not batch-invariant), it
looks ahead again from there.

Reading its timing: wall time and ``GenerationStats.draft_s`` include the lookahead, which a
real system could not run. ``lookahead_s`` holds that time (per generate call): take
``new_tokens / (total_s - lookahead_s)`` as the oracle's tokens/s. The head also runs one
level past the last accepted token (to see the mismatch), as a predictor of the accepted
length would not need to; tau and the draft lengths are exact.
"""

from __future__ import annotations

import time

from adaeagle_ext.spec.chain import EagleChain
from adaeagle_ext.spec.chain_options import DEFAULT_K_MAX, check_k_max, parse_options
from adaeagle_ext.spec.stop_rules import OracleMatch
from adaeagle_ext.spec.strategy import DraftTree, StepState, register


@register
class OracleChain(EagleChain):
    name = "oracle"

    def __init__(self, spec: str | None = None, head=None, k_max: int | None = None):
        opts = parse_options(self.name, spec, ("k_max",))
        super().__init__(check_k_max(self.name, k_max if k_max is not None else
                                     opts.get("k_max", DEFAULT_K_MAX)), head)
        self.lookahead_s = 0.0

    def setup(self, model, batch: int) -> None:
        super().setup(model, batch)
        self.target = model
        self.future: list[list[int] | None] = [None] * batch  # history + greedy continuation
        self.lookahead_s = 0.0
        self.rule = OracleMatch()

    def propose(self, state: StepState) -> DraftTree:
        if not state.sampling.greedy:
            raise ValueError("method 'oracle' is greedy only (temperature 0): its draft "
                             "lengths come from the target's greedy continuation")
        act = state.active.nonzero().flatten().tolist()
        stale = [b for b in act if not self._follows(b, state.history[b])]
        if stale:
            self._look_ahead(state, stale)
        self.rule.expected = {b: self.future[b][len(state.history[b]):] for b in act}
        return super().propose(state)

    def _follows(self, b: int, history: list[int]) -> bool:
        known = self.future[b]
        return known is not None and known[:len(history)] == history

    def _look_ahead(self, state: StepState, rows: list[int]) -> None:
        """The target's greedy continuation after each of ``rows``' histories (root included),
        as far as the request may still go."""
        from adaeagle_ext.spec.generate import generate_ids  # generate imports this module

        t0 = time.perf_counter()
        if state.remaining is None:
            n = self.k
        else:
            n = max(int(state.remaining[b]) for b in rows)
        prompts = [list(state.history[b]) for b in rows]
        outs, _ = generate_ids(self.target, prompts, method="ar", max_new_tokens=max(n, 1))
        for b, p, o in zip(rows, prompts, outs, strict=True):
            self.future[b] = p + o.token_ids
        self.lookahead_s += time.perf_counter() - t0
