"""Repetition, frequency and presence penalties (vLLM / OpenAI / HF semantics)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PenaltyTensors:
    presence: torch.Tensor  # [B] float32, 0 = off
    frequency: torch.Tensor  # [B] float32, 0 = off
    repetition: torch.Tensor  # [B] float32, 1 = off
    prompt_mask: torch.Tensor  # [B, V] bool: token occurs in the prompt
    output_counts: torch.Tensor  # [B, V] int32: occurrences in the output so far


def token_counts(
    token_ids: list[list[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """[B, V] int32 occurrence counts of each row's token ids, by one scatter_add.

    The rows are padded with an extra id `vocab_size` (a scratch column dropped at the end), so
    no Python loop touches the vocabulary.
    """
    num_rows = len(token_ids)
    max_len = max((len(ids) for ids in token_ids), default=0)
    counts = torch.zeros(num_rows, vocab_size + 1, dtype=torch.int32, device=device)
    if max_len == 0:
        return counts[:, :vocab_size]
    pad = [vocab_size]
    padded = torch.tensor(
        [ids + pad * (max_len - len(ids)) for ids in token_ids], dtype=torch.long, device=device
    )  # [B, max_len]
    assert int(padded.max()) <= vocab_size and int(padded.min()) >= 0, "token id out of vocab"
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.int32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, penalties: PenaltyTensors | None) -> torch.Tensor:
    """In place on logits [B, V].

    Repetition (HF/vLLM): over prompt + output tokens, positive logits are divided by the
    penalty and negative ones multiplied. Frequency / presence (OpenAI): over output tokens only,
    logits -= frequency * count + presence * (count > 0).
    """
    if penalties is None:
        return logits
    counts = penalties.output_counts
    seen = penalties.prompt_mask | (counts > 0)
    rep = penalties.repetition.unsqueeze(1)  # [B, 1]
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, penalized, logits))
    logits.sub_(penalties.frequency.unsqueeze(1) * counts)
    logits.sub_(penalties.presence.unsqueeze(1) * (counts > 0))
    return logits
