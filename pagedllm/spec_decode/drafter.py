"""Drafter: which requests draft, how many tokens, and the drafts themselves (from the
configured method's Proposer, proposer.py).

- Every request may draft. Penalties, min_tokens and bad_words: each verify row counts the
  drafts before it as generated. Seeded random requests: their noise is keyed by position, so
  a verify row samples what one-token decoding would (sample/ops/seeded.py) and their output
  does not depend on the drafts. Structured outputs: the scheduler cuts drafts to what the
  grammar allows and sends a bitmask row per verify row (structured_output/manager.py).
- Nobody drafts while the batch holds disable_by_batch_size requests or more: the forward is
  then compute-bound and the extra query rows cost more than the accepted tokens save.
- Per request, the draft length follows its acceptance: with `a` the estimated chance that a
  draft token is accepted (given the ones before it were) and `c` the cost of verifying one
  draft token relative to a decode step (draft_token_cost, measured at start-up), a draft of
  k tokens yields 1 + a + ... + a^k tokens for 1 + c k of cost; the request drafts the k that
  maximizes that ratio, and none when no k beats plain decoding. A request that stops
  drafting tries again after PAUSE_STEPS steps from a fresh estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.sampling_params import SamplingParams
from pagedllm.spec_decode.proposer import PROPOSERS, Proposer, create_proposer

DEFAULT_DRAFT_TOKEN_COST = 0.25
"""Until the worker measured it (SmolLM2 Q4_1 on 2 Zen 5 cores)."""
PAUSE_STEPS = 32
"""Steps a request goes without drafts once they stopped paying."""
PRIOR_ACCEPTANCE = 0.6
"""The acceptance estimate a request starts (and restarts) from."""
_EMA = 0.3
"""Weight of the latest draft's outcome in the acceptance estimate."""


MIN_GAIN = 0.1
"""A draft must promise this much more than plain decoding (tokens per unit of cost): proposing
and verifying carry per-step costs the cost model leaves out."""


def best_draft_length(acceptance: float, cost: float, max_length: int) -> int:
    """The k in 0..max_length maximizing (1 + a + ... + a^k) / (1 + cost k), 0 unless that
    beats plain decoding by MIN_GAIN."""
    best_k, best, tokens, term = 0, 1.0 + MIN_GAIN, 1.0, 1.0
    for k in range(1, max_length + 1):
        term *= acceptance
        tokens += term
        if tokens / (1 + cost * k) > best:
            best_k, best = k, tokens / (1 + cost * k)
    return best_k


@dataclass
class DraftState:
    acceptance: float = PRIOR_ACCEPTANCE
    """Estimated chance that a draft token is accepted after accepted ones."""
    paused_steps: int = 0


class Drafter:
    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.states: dict[str, DraftState] = {}
        self.cost = config.draft_token_cost or DEFAULT_DRAFT_TOKEN_COST
        """Verifying one draft token, as a fraction of a decode step (the worker measures it
        when the config leaves it to "auto")."""
        self.paused = False
        """No request drafts while set (Worker.set_drafting: A/B measurements on one engine)."""
        self.proposer: Proposer | None = (
            create_proposer(config) if config.method in PROPOSERS else None)
        """The model-free proposer (ngram, suffix); None for a drafter with its own model."""

    def add_request(self, req_id: str, params: SamplingParams) -> None:
        self.states[req_id] = DraftState()
        if self.proposer is not None:
            self.proposer.add_request(req_id)

    def remove_request(self, req_id: str) -> None:
        """The request finished, was aborted or was preempted (it may come back)."""
        if self.states.pop(req_id, None) is not None and self.proposer is not None:
            self.proposer.remove_request(req_id)

    def draft_length(self, req_id: str) -> int:
        state = self.states.get(req_id)
        if state is None or state.paused_steps:
            return 0
        return best_draft_length(state.acceptance, self.cost, self.config.num_speculative_tokens)

    def observe(self, req_id: str, num_drafted: int, num_accepted: int) -> None:
        """Update the request's acceptance estimate from its last draft: num_accepted
        acceptances, then one rejection unless all were accepted."""
        state = self.states.get(req_id)
        if state is None or num_drafted == 0:
            return
        trials = num_accepted + (num_accepted < num_drafted)
        rate = num_accepted / trials
        state.acceptance += min(1.0, _EMA * trials) * (rate - state.acceptance)
        if self.draft_length(req_id) == 0:
            state.paused_steps = PAUSE_STEPS

    def draft_lengths(self, req_ids: list[str], rows: np.ndarray, num_tokens: np.ndarray,
                      batch_size: int) -> list[tuple[str, int, int, int]]:
        """(req_id, row, num_tokens, draft length) of the requests that draft this step; counts
        down the paused requests' pauses."""
        limit = self.config.disable_by_batch_size
        if self.paused or (limit is not None and batch_size >= limit):
            return []
        drafting = []
        for req_id, row, length in zip(req_ids, rows.tolist(), num_tokens.tolist()):
            state = self.states.get(req_id)
            if state is None:
                continue
            if state.paused_steps:
                state.paused_steps -= 1
                if state.paused_steps == 0:
                    state.acceptance = PRIOR_ACCEPTANCE
                continue
            k = self.draft_length(req_id)
            if k:
                drafting.append((req_id, row, length, k))
        return drafting

    def propose(self, req_ids: list[str], token_ids: np.ndarray, rows: np.ndarray,
                num_tokens: np.ndarray, batch_size: int) -> dict[str, list[int]]:
        """Drafts for the next step of these requests (token_ids: the batch's [rows, len]
        token array; rows [S] and num_tokens [S] theirs)."""
        assert self.proposer is not None
        drafts: dict[str, list[int]] = {}
        for req_id, row, length, k in self.draft_lengths(req_ids, rows, num_tokens, batch_size):
            draft = self.proposer.propose(req_id, token_ids[row, :length], k)
            if draft:
                drafts[req_id] = draft
        return drafts
