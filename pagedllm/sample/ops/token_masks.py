"""Token masks: allowed_token_ids (only these may be sampled) and bad_words (the last token of a
banned word whose earlier tokens were just generated). Both only ever set logits to -inf."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagedllm.sample.ops.logit_bias import SparseRowTokens


def apply_allowed_token_ids(logits: torch.Tensor, allowed: SparseRowTokens | None) -> torch.Tensor:
    """In place: every token of a constrained row that is not one of its (row, token) pairs in
    `allowed` -> -inf. Rows with no pair are left as they are. logits: [B, V]."""
    if allowed is None:
        return logits
    # One [R, V] mask for the R constrained rows only (not the whole batch).
    rows, local = torch.unique(allowed.rows, return_inverse=True)  # [R], [N]
    keep = torch.zeros(len(rows), logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[local, allowed.tokens] = True
    logits[rows] = logits[rows].masked_fill_(~keep, float("-inf"))
    return logits


def apply_banned_tokens(logits: torch.Tensor, banned: SparseRowTokens | None) -> torch.Tensor:
    """In place: logits[row, token] = -inf for each (row, token) pair. logits: [B, V]."""
    if banned is not None:
        logits[banned.rows, banned.tokens] = float("-inf")
    return logits


def bad_words_banned(sequences: Sequence[Sequence[int]], output_tail: Sequence[int]) -> list[int]:
    """The tokens a request with these tokenized bad words may not sample next, sorted.

    A one-token word is always banned; a longer word's last token is banned when its other
    tokens are the last tokens generated. Only the last (longest word - 1) tokens of the output
    matter, so output_tail may be just those (vLLM compares with output tokens only, never the
    prompt)."""
    banned = set()
    for seq in sequences:
        prefix = len(seq) - 1
        if prefix == 0 or (
            len(output_tail) >= prefix
            and list(output_tail[len(output_tail) - prefix :]) == list(seq[:-1])
        ):
            banned.add(seq[-1])
    return sorted(banned)


def bad_words_context(sequences: Sequence[Sequence[int]]) -> int:
    """How many of the latest output tokens bad_words_banned needs to see."""
    return max((len(s) - 1 for s in sequences), default=0)
