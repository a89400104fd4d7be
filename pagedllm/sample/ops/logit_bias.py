"""Additive per-token biases (OpenAI logit_bias) and min_tokens suppression of stop tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseRowTokens:
    """A sparse set of (row, token) entries of a [B, V] matrix, with an optional value each."""

    rows: torch.Tensor  # [N] long
    tokens: torch.Tensor  # [N] long
    values: torch.Tensor | None = None  # [N] float32


def apply_logit_bias(logits: torch.Tensor, bias: SparseRowTokens | None) -> torch.Tensor:
    """logits[row, token] += value, in place. logits: [B, V]."""
    if bias is not None:
        assert bias.values is not None
        logits.index_put_((bias.rows, bias.tokens), bias.values, accumulate=True)
    return logits


def apply_min_tokens(logits: torch.Tensor, blocked: SparseRowTokens | None) -> torch.Tensor:
    """logits[row, token] = -inf for stop tokens of rows that have not reached min_tokens."""
    if blocked is not None:
        logits[blocked.rows, blocked.tokens] = float("-inf")
    return logits
