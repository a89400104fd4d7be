"""Prompt lookup: the longest recent suffix found earlier proposes what followed it."""

from __future__ import annotations

import numpy as np
import pytest

from pagedllm.config import SpeculativeConfig
from pagedllm.sampling_params import SamplingParams
from pagedllm.spec_decode.drafter import Drafter, best_draft_length
from pagedllm.spec_decode.ngram import NgramIndex, propose_ngram


def test_longest_suffix_wins_and_the_most_recent_occurrence():
    tokens = np.array([7, 1, 2, 3, 9, 1, 2, 4, 5, 8, 2, 3])
    # "2 3" occurs at 2..3 (followed by 9, 1); "3" alone would also match there
    assert propose_ngram(tokens, 1, 3, 2) == [9, 1]
    tokens = np.array([1, 2, 5, 6, 1, 2, 7, 8, 1, 2])
    assert propose_ngram(tokens, 1, 2, 3) == [7, 8, 1]  # the later "1 2"


def test_no_match_or_too_short():
    assert propose_ngram(np.array([1, 2, 3, 4]), 1, 3, 4) == []
    assert propose_ngram(np.array([5]), 1, 3, 4) == []
    assert propose_ngram(np.array([1, 2, 1, 2, 1, 2, 3]), 2, 2, 4) == []  # "2 3" is new


def test_draft_length_follows_acceptance_and_cost():
    assert best_draft_length(0.9, 0.25, 8) >= 4
    assert best_draft_length(0.6, 0.25, 8) == 2
    assert best_draft_length(0.2, 0.25, 8) == 0, "drafts that rarely land cost more than they give"
    assert best_draft_length(0.2, 0.05, 8) >= 1, "unless verifying is nearly free"
    assert best_draft_length(1.0, 0.25, 5) == 5


def test_drafting_pauses_when_it_stops_paying_and_retries():
    drafter = Drafter(SpeculativeConfig(num_speculative_tokens=4, draft_token_cost=0.25,
                                        prompt_lookup_min=1, disable_by_batch_size=4))
    drafter.add_request("r", SamplingParams(temperature=0))
    state = drafter.states["r"]
    tokens = np.array([[1, 2, 3, 1, 2, 3, 1, 2]])
    args = (["r"], tokens, np.array([0]), np.array([8]))
    first = drafter.propose(*args, batch_size=1)["r"]
    for _ in range(10):  # every draft rejected
        drafter.observe("r", max(1, drafter.draft_length("r")), 0)
        if state.paused_steps:
            break
    assert state.paused_steps > 0 and drafter.draft_length("r") == 0
    while state.paused_steps:
        assert drafter.propose(*args, batch_size=1) == {}
    assert drafter.propose(*args, batch_size=1) == {"r": first}, "retries from the prior"
    for _ in range(5):
        drafter.observe("r", drafter.draft_length("r"), drafter.draft_length("r"))
    assert drafter.draft_length("r") == 4, "a request whose drafts all land drafts the most"
    assert drafter.propose(*args, batch_size=4) == {}, "large batches do not draft"


@pytest.mark.parametrize("min_n, max_n", [(1, 3), (2, 4), (3, 3)])
def test_incremental_index_equals_the_scan(min_n, max_n):
    """The per-request index gives propose_ngram's answer at every length, fed one or several
    tokens at a time (a request that paused drafting catches up)."""
    rng = np.random.default_rng(min_n * 10 + max_n)
    for trial in range(20):
        tokens = rng.integers(0, 4 + trial % 5, size=120)
        index = NgramIndex(min_n, max_n)
        length = 1
        while length <= len(tokens):
            prefix = tokens[:length]
            assert index.propose(prefix, 5) == propose_ngram(prefix, min_n, max_n, 5), length
            length += int(rng.integers(1, 4))
