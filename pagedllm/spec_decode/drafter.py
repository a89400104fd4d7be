"""Drafter: which requests draft, how many tokens, and the drafts themselves.

- Only requests whose sampling does not depend on their position may draft: no penalties,
  bad_words, min_tokens or structured outputs (those transforms would need the drafts as
  history), and no seeded random sampling (its draws would depend on the drafts, breaking
  "same seed, same output whatever else is batched"). Greedy and unseeded random requests do.
- Nobody drafts while the batch holds disable_by_batch_size requests or more: the forward is
  then compute-bound and the extra query rows cost more than the accepted tokens save.
- Per request, the draft length adapts to acceptance: it grows after a fully accepted draft,
  shrinks while the recent acceptance rate (an exponential average) is below
  min_acceptance_rate, and at zero the request pauses drafting for a while before trying again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.sample.metadata import uses_penalty
from pagedllm.sampling_params import SamplingParams
from pagedllm.spec_decode.ngram import propose_ngram

PAUSE_STEPS = 16
"""Steps a request stops drafting after its draft length fell to zero."""
_EMA = 0.5
"""Weight of the latest draft in the acceptance average."""


def can_draft(params: SamplingParams) -> bool:
    return not (
        uses_penalty(params)
        or params.bad_words
        or params.min_tokens > 0
        or params.structured_outputs is not None
        or (params.seed is not None and not params.is_greedy)
    )


@dataclass
class DraftState:
    length: int
    """Tokens to draft next time."""
    acceptance: float = 1.0
    """Exponential average of the accepted fraction of recent drafts."""
    paused_steps: int = 0


class Drafter:
    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.states: dict[str, DraftState] = {}

    def add_request(self, req_id: str, params: SamplingParams) -> None:
        if can_draft(params):
            self.states[req_id] = DraftState(self.config.num_speculative_tokens)

    def remove_request(self, req_id: str) -> None:
        self.states.pop(req_id, None)

    def observe(self, req_id: str, num_drafted: int, num_accepted: int) -> None:
        """Adapt the request's draft length to how much of its last draft was accepted."""
        state = self.states.get(req_id)
        if state is None or num_drafted == 0:
            return
        state.acceptance = (1 - _EMA) * state.acceptance + _EMA * num_accepted / num_drafted
        if num_accepted == num_drafted:
            state.length = min(self.config.num_speculative_tokens, state.length + 1)
        elif state.acceptance < self.config.min_acceptance_rate:
            state.length -= 1
            if state.length == 0:
                state.paused_steps = PAUSE_STEPS

    def propose(self, req_ids: list[str], token_ids: np.ndarray, rows: np.ndarray,
                num_tokens: np.ndarray, batch_size: int) -> dict[str, list[int]]:
        """Drafts for the next step of these requests (token_ids: the batch's [rows, len]
        token array; rows [S] and num_tokens [S] theirs)."""
        limit = self.config.disable_by_batch_size
        if limit is not None and batch_size >= limit:
            return {}
        drafts: dict[str, list[int]] = {}
        for req_id, row, length in zip(req_ids, rows.tolist(), num_tokens.tolist()):
            state = self.states.get(req_id)
            if state is None:
                continue
            if state.paused_steps:
                state.paused_steps -= 1
                if state.paused_steps == 0:
                    state.length, state.acceptance = 1, self.config.min_acceptance_rate
                continue
            draft = propose_ngram(token_ids[row, :length], self.config.prompt_lookup_min,
                                  self.config.prompt_lookup_max, state.length)
            if draft:
                drafts[req_id] = draft
        return drafts
