"""Prompt-lookup (n-gram) drafting: find the sequence's last n tokens earlier in the sequence
(prompt and output), and propose the tokens that followed them there.

It costs no model and pays off where outputs repeat their context: summaries and edits of a
given text, code completion with the file in the prompt, structured extraction.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.spec_decode.proposer import Proposer


def propose_ngram(tokens: np.ndarray, min_n: int, max_n: int, num_tokens: int) -> list[int]:
    """Up to num_tokens drafts continuing `tokens` (1-D), from the most recent earlier
    occurrence of its longest suffix of length in [min_n, max_n]; [] when none occurs."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n:]
        # Windows starting at 0..length-1-n: each has at least one token after it.
        windows = sliding_window_view(tokens[: length - 1], n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        if len(starts):
            follow = int(starts[-1]) + n
            return tokens[follow : follow + num_tokens].tolist()
    return []


class NgramProposer(Proposer):
    def __init__(self, config: SpeculativeConfig) -> None:
        self.min_n = config.prompt_lookup_min
        self.max_n = config.prompt_lookup_max

    def propose(self, req_id: str, tokens: np.ndarray, max_tokens: int) -> list[int]:
        return propose_ngram(tokens, self.min_n, self.max_n, max_tokens)
