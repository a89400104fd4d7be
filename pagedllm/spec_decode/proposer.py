"""Proposer: drafts one request's next tokens from its tokens so far (no model). The Drafter
decides who drafts and how many tokens; a proposer only says which.

Implementations, by SpeculativeConfig.method (imported only when used):
- "ngram": prompt lookup (ngram.py), an n-gram index per request.
- "suffix": suffix decoding (suffix.py), a suffix tree per request plus one over finished
  requests' outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.utils.registry import Registry

PROPOSERS = Registry("speculative method")
PROPOSERS.register("ngram", "pagedllm.spec_decode.ngram", "NgramProposer")
PROPOSERS.register("suffix", "pagedllm.spec_decode.suffix", "SuffixProposer")


class Proposer(ABC):
    def add_request(self, req_id: str) -> None:  # noqa: B027 - stateless proposers need none
        """A request that may draft joined the batch (new, or resumed after preemption)."""

    def remove_request(self, req_id: str) -> None:  # noqa: B027
        """The request left the batch: finished, aborted or preempted."""

    @abstractmethod
    def propose(self, req_id: str, tokens: np.ndarray, max_tokens: int) -> list[int]:
        """Up to max_tokens drafts continuing `tokens` (1-D: the request's prompt and output
        so far, one token longer than at its last call or more); [] for none."""


def create_proposer(config: SpeculativeConfig) -> Proposer:
    return PROPOSERS.get(config.method)(config)
