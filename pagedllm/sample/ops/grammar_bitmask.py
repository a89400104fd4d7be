"""Structured outputs: mask the logits of constrained rows to the tokens their grammar allows.

The bitmask comes from the scheduler side (one int32 row of ceil(V / 32) words per constrained
request, bit t % 32 of word t // 32 set when token t is allowed) and is unpacked here in one
vectorized op over the constrained rows; unconstrained rows are not touched, so their tokens do
not depend on who else is in the batch.
"""

from __future__ import annotations

import torch

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True where the token is allowed."""
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32,
                                                        device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts).bitwise_and_(1)  # [R, W, 32]
    return bits.flatten(1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> None:
    """In place: logits[rows[i], t] = -inf where bitmask row i disallows t. logits [B, V]."""
    if rows.numel() == 0:
        return
    allowed = unpack_bitmask(bitmask.to(logits.device), logits.shape[-1])
    logits[rows] = logits[rows].masked_fill_(~allowed, float("-inf"))
