"""Suffix decoding (vLLM's `method: "suffix"`, after Arctic Inference's SuffixDecoding,
arXiv 2411.04975): drafts from two suffix trees (suffix_tree.py) with occurrence counts,
- the request's own tree over its prompt and output so far, fed the new tokens at each call,
- a global tree over the outputs of up to suffix_decoding_max_cached_requests earlier requests
  (the oldest cached is evicted first, as in vLLM), so repeated tasks draft whole answers.

Each step the last tokens of the sequence (a pattern shorter than max_tree_depth) are matched at
every length in both trees; from each match the most frequent continuation is followed while
its estimated probability stays >= min_token_prob, for at most max_spec_factor * match length
tokens (and the Drafter's draft length). The draft with the highest expected number of accepted
tokens (its summed probabilities) wins; ties go to the longer match and the request's own tree.
A step costs O(depth^2 + depth * draft length), whatever the sequence length; feeding a token
costs O(depth).

NOTE: the Drafter hears of a request leaving the batch (remove_request) without knowing whether
it finished or was preempted, so its output is cached on every removal; a request resumed after
preemption comes back under the same id and takes its partial output back out of the cache
(as vLLM does). A new request reusing a cached request's id evicts that cached output too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.spec_decode.proposer import Proposer
from pagedllm.spec_decode.suffix_tree import SuffixTree

_OWN = 0
"""The sequence id of a request's prompt + output in its own tree."""


@dataclass
class SuffixDraft:
    token_ids: list[int] = field(default_factory=list)
    score: float = 0.0
    """Summed estimated probabilities of the tokens: the expected number accepted."""
    match_len: int = 0


def speculate(tree: SuffixTree, pattern: Sequence[int], max_tokens: int, max_spec_factor: float,
              min_token_prob: float) -> SuffixDraft:
    """The best draft from any suffix of `pattern` found in the tree."""
    best = SuffixDraft()
    for match_len in range(1, len(pattern) + 1):
        hit = tree.match(pattern[len(pattern) - match_len:])
        if hit is None:
            break  # a longer suffix cannot occur either
        limit = min(max_tokens, int(match_len * max_spec_factor + 1e-6))
        tokens, score = tree.continuation(*hit, limit, min_token_prob)
        if tokens and score >= best.score:
            best = SuffixDraft(tokens, score, match_len)
    return best


class ResponseCache:
    """Finished requests' outputs in one suffix tree, at most max_requests of them."""

    def __init__(self, max_requests: int, max_depth: int) -> None:
        self.max_requests = max_requests
        self.tree = SuffixTree(max_depth)
        self.prompt_lens: OrderedDict[str, int] = OrderedDict()
        """Cached request ids, oldest first, with where their output started."""

    def add(self, req_id: str, output: Sequence[int], prompt_len: int) -> None:
        if self.max_requests == 0 or not len(output):
            return
        self.pop(req_id)
        self.tree.extend(req_id, output)
        self.tree.freeze(req_id)
        self.prompt_lens[req_id] = prompt_len
        while len(self.prompt_lens) > self.max_requests:
            self.pop(next(iter(self.prompt_lens)))

    def pop(self, req_id: str) -> int | None:
        """Evict the request's output; return its prompt length (None if not cached)."""
        prompt_len = self.prompt_lens.pop(req_id, None)
        if prompt_len is not None:
            self.tree.remove(req_id)
        return prompt_len


@dataclass
class _RequestState:
    tree: SuffixTree
    prompt_len: int | None
    """Where the output starts; None until the first call (then: all but the last token)."""

    @property
    def num_tokens(self) -> int:
        """Tokens fed to the tree so far."""
        return len(self.tree.seqs.get(_OWN, ()))


class SuffixProposer(Proposer):
    def __init__(self, config: SpeculativeConfig) -> None:
        self.max_depth = config.suffix_decoding_max_tree_depth
        self.max_spec_factor = config.suffix_decoding_max_spec_factor
        self.min_token_prob = config.suffix_decoding_min_token_prob
        self.cache = ResponseCache(config.suffix_decoding_max_cached_requests, self.max_depth)
        self.requests: dict[str, _RequestState] = {}

    def add_request(self, req_id: str) -> None:
        # A preempted request resumes here: its partial output leaves the cache again.
        prompt_len = self.cache.pop(req_id)
        self.requests[req_id] = _RequestState(SuffixTree(self.max_depth), prompt_len)

    def remove_request(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None and state.prompt_len is not None:
            tokens = state.tree.seqs.get(_OWN, [])
            self.cache.add(req_id, tokens[state.prompt_len:], state.prompt_len)

    def propose(self, req_id: str, tokens: np.ndarray, max_tokens: int) -> list[int]:
        state = self.requests[req_id]
        length = len(tokens)
        if state.prompt_len is None:
            # First call: right after the first sampled token, unless drafting was off then.
            state.prompt_len = length - 1
        state.tree.extend(_OWN, tokens[state.num_tokens:length].tolist())
        # Matches end at depth < max_tree_depth, leaving room for at least one drafted token.
        pattern = tokens[max(0, length - self.max_depth + 1):length].tolist()
        args = (max_tokens, self.max_spec_factor, self.min_token_prob)
        draft = speculate(state.tree, pattern, *args)
        if self.cache.prompt_lens:
            cached = speculate(self.cache.tree, pattern, *args)
            if cached.score > draft.score:
                draft = cached
        return draft.token_ids
