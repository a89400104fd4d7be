"""PenaltyCounts: the token statistics the penalties read, kept per request and updated as
tokens are sampled, so no step recounts a request's history.

Only requests with a presence, frequency or repetition penalty hold a slot (most requests use
none, and a slot is two vocabulary-wide rows). A slot is filled from the request's tokens once,
when it joins the batch (also after a preemption), then grows by one count per sampled token.
"""

from __future__ import annotations

import torch

from pagedllm.sample.ops.penalties import token_counts


class PenaltyCounts:
    def __init__(self, vocab_size: int, device: torch.device, num_slots: int = 0) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.prompt_mask = torch.zeros(num_slots, vocab_size, dtype=torch.bool, device=device)
        """[slots, V] bool: the token occurs in the slot's prompt."""
        self.output_counts = torch.zeros(num_slots, vocab_size, dtype=torch.int32, device=device)
        """[slots, V] int32: occurrences in the slot's output so far."""
        self.free_slots = list(range(num_slots))

    def acquire(self, prompt_token_ids: list[int], output_token_ids: list[int]) -> int:
        if not self.free_slots:
            self._grow()
        slot = self.free_slots.pop()
        counts = token_counts([prompt_token_ids, output_token_ids], self.vocab_size, self.device)
        self.prompt_mask[slot] = counts[0] > 0
        self.output_counts[slot] = counts[1]
        return slot

    @property
    def num_held(self) -> int:
        """Slots held by requests."""
        return self.prompt_mask.shape[0] - len(self.free_slots)

    def release(self, slot: int) -> None:
        self.free_slots.append(slot)

    def add_tokens(self, slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        """One more occurrence of token_ids[i] in slot slots[i]'s output. Both: [N] long."""
        ones = torch.ones_like(token_ids, dtype=torch.int32)
        self.output_counts.index_put_((slots, token_ids), ones, accumulate=True)

    def _grow(self) -> None:
        old = self.prompt_mask.shape[0]
        new = max(4, 2 * old)
        self.prompt_mask = _grown_rows(self.prompt_mask, new)
        self.output_counts = _grown_rows(self.output_counts, new)
        self.free_slots.extend(range(new - 1, old - 1, -1))


def _grown_rows(tensor: torch.Tensor, num_rows: int) -> torch.Tensor:
    out = tensor.new_zeros(num_rows, tensor.shape[1])
    out[: tensor.shape[0]] = tensor
    return out
