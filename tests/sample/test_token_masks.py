"""allowed_token_ids and bad_words: the ops against per-row loops, and the sampler honouring them
on greedy and random rows."""

from __future__ import annotations

import pytest
import torch

from pagedllm.sample import Sampler
from pagedllm.sample.ops.token_masks import (
    apply_allowed_token_ids,
    apply_banned_tokens,
    bad_words_banned,
)

from .sample_helpers import build, make_row

V = 40


def _row(prompt=None, output=None, bad_words_ids=None, **params):
    row = make_row(prompt, output, **params)
    row.params._bad_words_token_ids = bad_words_ids
    return row


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_allowed_token_ids_masks_only_the_constrained_rows() -> None:
    allowed = {0: [3, 7, 7, 39], 2: [0], 3: [5, 1]}
    rows = [_row(allowed_token_ids=allowed.get(i)) for i in range(5)]
    logits = _logits(5)
    metadata = build(rows, V)
    got = apply_allowed_token_ids(logits.clone(), metadata.allowed_token_ids)
    for i in range(5):
        for t in range(V):
            keep = i not in allowed or t in allowed[i]
            assert got[i, t] == (logits[i, t] if keep else float("-inf")), (i, t)


def test_no_constraint_means_none() -> None:
    metadata = build([_row(), _row(output=[1, 2])], V)
    assert metadata.allowed_token_ids is None and metadata.bad_words_banned is None


@pytest.mark.parametrize(
    "output, expected",
    [
        ([], [9]),  # only the one-token word; nothing generated yet to match a prefix
        ([4], [5, 9]),  # [4, 5]'s prefix was just generated
        ([4, 6], [9]),  # ... but not as the last token
        ([1, 2, 3], [9, 20]),  # [2, 3, 20]
        ([2, 3], [9, 20]),
        ([3], [9]),  # [2, 3, 20] needs both 2 and 3
        ([2, 3, 4], [5, 9]),
    ],
)
def test_bad_words_ban_the_last_token_after_the_prefix(output, expected) -> None:
    sequences = [[9], [4, 5], [2, 3, 20]]
    assert bad_words_banned(sequences, output) == expected
    # The build looks at output tokens only: a prompt ending with a prefix bans nothing more.
    row = _row(prompt=[2, 3, 4], output=output, bad_words_ids=sequences)
    banned = build([_row(), row], V).bad_words_banned
    assert banned is not None and banned.rows.tolist() == [1] * len(expected)
    assert banned.tokens.tolist() == expected


def test_banned_tokens_set_minus_inf() -> None:
    rows = [_row(output=[4], bad_words_ids=[[4, 5]]), _row(), _row(bad_words_ids=[[7], [8]])]
    logits = _logits(3)
    got = apply_banned_tokens(logits.clone(), build(rows, V).bad_words_banned)
    want = logits.clone()
    want[0, 5] = want[2, 7] = want[2, 8] = float("-inf")
    assert torch.equal(got, want)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_picks_only_allowed_tokens(temperature) -> None:
    allowed = [2, 11, 30]
    rows = [make_row(temperature=temperature, allowed_token_ids=allowed, top_k=2),
            make_row(temperature=temperature, allowed_token_ids=allowed),
            make_row(temperature=0.0)]
    sampler = Sampler()
    for step in range(50):
        logits = _logits(3, seed=step)
        out = sampler(logits.clone(), build(rows, V)).sampled_token_ids.tolist()
        assert out[0] in allowed and out[1] in allowed
        assert out[2] == int(logits[2].argmax())  # the unconstrained row is untouched
        if temperature == 0.0:
            best = max(allowed, key=lambda t: logits[1, t])
            assert out[1] == best


def test_greedy_row_falls_back_to_the_next_best_after_a_bad_word_prefix() -> None:
    logits = _logits(2)
    top2 = logits[0].topk(2).indices.tolist()
    prefix = [1, 2]
    rows = [_row(output=[7] + prefix, bad_words_ids=[prefix + [top2[0]]], temperature=0.0),
            _row(output=[7, 2], bad_words_ids=[prefix + [top2[0]]], temperature=0.0)]
    out = Sampler()(logits.clone(), build(rows, V)).sampled_token_ids.tolist()
    assert out[0] == top2[1]
    assert out[1] == int(logits[1].argmax())  # its output does not end with the prefix
