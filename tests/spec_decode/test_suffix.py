"""Suffix decoding's proposer: what it drafts from a request's own tokens and from earlier
requests' outputs, the spec factor and min probability limits, incremental feeding, and the
cross-request cache (eviction, preempted requests, 0 = off)."""

from __future__ import annotations

import numpy as np
import pytest

from pagedllm.config import SpeculativeConfig
from pagedllm.sampling_params import SamplingParams
from pagedllm.spec_decode.drafter import Drafter
from pagedllm.spec_decode.suffix import SuffixProposer, speculate
from pagedllm.spec_decode.suffix_tree import SuffixTree


def proposer(**kw) -> SuffixProposer:
    return SuffixProposer(SpeculativeConfig(method="suffix", **kw))


def arr(tokens) -> np.ndarray:
    return np.array(tokens, dtype=np.int64)


def test_drafts_what_followed_the_longest_useful_match_in_its_own_tokens():
    p = proposer()
    p.add_request("a")
    # "7 8 9" was followed by "10 11 12" once; "9" alone by "10" and by "20"
    tokens = [7, 8, 9, 10, 11, 12, 1, 9, 20, 2, 7, 8, 9]
    assert p.propose("a", arr(tokens), 3) == [10, 11, 12]


def test_spec_factor_limits_drafts_by_the_match_length():
    tree = SuffixTree(24)
    tree.extend(0, [5, 1, 2, 3, 4, 6, 7, 8])
    # pattern "9 5": only "5" matches (length 1) -> 1 token at factor 1, 2 at factor 2
    assert speculate(tree, [9, 5], 8, 1.0, 0.1).token_ids == [1]
    assert speculate(tree, [9, 5], 8, 2.0, 0.1).token_ids == [1, 2]
    assert speculate(tree, [4, 6], 8, 1.0, 0.1).token_ids == [7, 8], "match 2 -> 2 tokens"
    assert speculate(tree, [4, 6], 1, 4.0, 0.1).token_ids == [7], "max_tokens caps it"


def test_min_token_prob_stops_at_uncertain_branches():
    tree = SuffixTree(24)
    # after "1 2 3": "4" twice, "5" twice, "6" once (a 2-2-1 split)
    tree.extend(0, [1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 5, 0, 1, 2, 3, 5, 0, 1, 2, 3, 6, 0])
    draft = speculate(tree, [1, 2, 3], 8, 4.0, 0.3)
    # 4 (2/5), then "0 1 2 3" always follows "1 2 3 4", then 4 or 5 (1/2 each: 0.2 < 0.3)
    assert draft.token_ids == [4, 0, 1, 2, 3] and draft.score == pytest.approx(5 * 0.4)
    assert speculate(tree, [1, 2, 3], 8, 4.0, 0.5).token_ids == []
    assert speculate(tree, [9, 1, 2], 8, 4.0, 0.5).token_ids == [3], "1 2 -> 3 always"
    # a longer context is surer: "0 1 2 3" -> 5 in 2 of 4, and "0 1 2 3 5" always -> "0 1 2 3"
    draft = speculate(tree, [0, 1, 2], 8, 4.0, 0.5)
    assert draft.token_ids == [3, 5, 0, 1, 2, 3] and draft.match_len == 3


def test_tokens_are_fed_incrementally():
    p = proposer()
    p.add_request("a")
    fed: list[int] = []
    tree = p.requests["a"].tree
    original = tree.extend
    tree.extend = lambda seq_id, tokens: (fed.append(len(tokens)), original(seq_id, tokens))
    tokens = list(range(3, 40)) * 3
    for length in range(30, len(tokens), 3):
        p.propose("a", arr(tokens[:length]), 4)
    assert fed == [30] + [3] * (len(fed) - 1), "each call feeds only the new tokens"
    assert tree.seqs[0] == tokens[: 30 + 3 * (len(fed) - 1)]


def finish(p: SuffixProposer, req_id: str, prompt: list[int], output: list[int]) -> None:
    p.add_request(req_id)
    p.propose(req_id, arr(prompt + output[:1]), 4)  # the first call: prompt + first token
    p.propose(req_id, arr(prompt + output), 4)
    p.remove_request(req_id)


def test_finished_outputs_draft_for_later_requests():
    answer = [50, 51, 52, 53, 54, 55, 56, 57]
    p = proposer()
    p.add_request("b")
    assert p.propose("b", arr([1, 2, 50, 51]), 4) == [], "nothing cached yet"
    finish(p, "a", [9, 9, 9], answer)
    assert p.cache.tree.seqs["a"] == answer, "the output only, not the prompt"
    # a 3-token match drafts 3 tokens (max_spec_factor 1)
    assert p.propose("b", arr([1, 2, 50, 51, 52]), 4) == [53, 54, 55]
    off = proposer(suffix_decoding_max_cached_requests=0)
    finish(off, "a", [9, 9, 9], answer)
    off.add_request("b")
    assert off.propose("b", arr([1, 2, 50, 51, 52]), 4) == [] and not off.cache.prompt_lens


def test_the_more_likely_draft_wins_between_own_tokens_and_the_cache():
    p = proposer()
    finish(p, "a", [9], [1, 2, 3, 4, 5, 6])
    p.add_request("b")
    # own: "1 2" twice, once followed by "7 1" (the other is the end): 1/2 each -> score 1;
    # the cache: "1 2" -> "3 4" for sure -> score 2
    assert p.propose("b", arr([1, 2, 7, 1, 2]), 2) == [3, 4]
    finish(p, "c", [9], [1, 2, 5, 6])
    p.add_request("d")
    # the cache now splits 1/2 - 1/2 after "1 2" (score 1) and own tokens say 8 3 times in 4
    assert p.propose("d", arr([1, 2, 8, 1, 2, 8, 1, 2, 8, 1, 2]), 2) == [8, 1]
    p.add_request("e")
    assert p.propose("e", arr([1, 2, 7, 1, 2]), 2) == [7, 1], "a tie goes to own tokens"


def test_cache_keeps_the_newest_requests():
    p = proposer(suffix_decoding_max_cached_requests=2)
    for i in range(3):
        finish(p, f"r{i}", [0], [100 + 10 * i + j for j in range(6)])
    assert list(p.cache.prompt_lens) == ["r1", "r2"]
    p.add_request("x")
    assert p.propose("x", arr([100, 101, 102]), 3) == [], "r0's output was evicted"
    assert p.propose("x", arr([100, 101, 102, 120, 121, 122]), 3) == [123, 124, 125]
    assert set(p.cache.tree.seqs) == {"r1", "r2"}
    assert p.cache.tree.root.count == 12, "eviction subtracted r0's occurrences"


def test_a_preempted_request_takes_its_partial_output_back():
    p = proposer()
    prompt, output = [1, 2, 3], [40, 41, 42, 43]
    p.add_request("a")
    p.propose("a", arr(prompt + output[:1]), 4)
    p.propose("a", arr(prompt + output[:3]), 4)
    p.remove_request("a")  # preempted: cached, since the drafter cannot tell
    assert p.cache.tree.seqs["a"] == output[:3]
    p.add_request("a")  # resumed: out of the cache, and its prompt length is remembered
    assert "a" not in p.cache.prompt_lens
    p.propose("a", arr(prompt + output), 4)
    p.remove_request("a")
    assert p.cache.tree.seqs["a"] == output and p.cache.tree.root.count == len(output)


def test_drafter_drafts_with_suffix_decoding():
    config = SpeculativeConfig(method="suffix", num_speculative_tokens=3,
                               disable_by_batch_size=None)
    drafter = Drafter(config)
    drafter.add_request("r", SamplingParams(temperature=0))
    drafter.add_request("p", SamplingParams(temperature=0.7, seed=1))
    tokens = np.array([[5, 6, 7, 8, 9, 5, 6, 7], [5, 6, 7, 8, 9, 5, 6, 7]])
    drafts = drafter.propose(["r", "p"], tokens, np.array([0, 1]), np.array([8, 8]), 2)
    assert drafts == {"r": [8, 9], "p": [8, 9]}, (
        "3-token match, capped by the draft length (2 at the prior)")
    drafter.remove_request("r")
    drafter.remove_request("p")
    assert list(drafter.proposer.cache.prompt_lens) == ["r", "p"]


@pytest.mark.parametrize("bad", [
    {"suffix_decoding_max_tree_depth": 0},
    {"suffix_decoding_max_cached_requests": -1},
    {"suffix_decoding_max_spec_factor": 0},
    {"suffix_decoding_min_token_prob": 1.5},
])
def test_bad_suffix_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SpeculativeConfig(method="suffix", **bad)
