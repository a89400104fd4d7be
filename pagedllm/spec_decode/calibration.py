"""What drafting costs on this model, device and execution strategy, measured at start-up: the
Drafter's cost per draft token (drafter.py) is the extra forward work of verifying it, plus, for
a draft model, the draft model's own one-token forward, both as fractions of the target's
one-token decode step."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from pagedllm.attention.backend import AttentionMetadataBuilder
from pagedllm.forward_context import set_forward_context
from pagedllm.worker.step_inputs import attention_metadata


@torch.inference_mode()
def forward_seconds(model: nn.Module, metadata_builder: AttentionMetadataBuilder,
                    block_size: int, device: torch.device, num_rows: int, context: int = 64,
                    repeats: int = 4) -> float:
    """Best of `repeats` forwards (and LM heads) of one sequence with num_rows query rows after
    `context` cached tokens. Writes throwaway K/V into the model's cache's first blocks, so
    call it before any request runs."""
    positions = np.arange(context, context + num_rows)
    num_blocks = -(-(context + num_rows) // block_size)
    slots = positions  # blocks 0, 1, ... in order: slot = position
    attn = attention_metadata(
        np.array([0, num_rows]), np.array([context + num_rows]),
        np.arange(num_blocks, dtype=np.int32)[None, :], slots, block_size, device)
    metadata = metadata_builder.build(attn)
    ids = torch.zeros(num_rows, dtype=torch.long, device=device)
    pos = torch.from_numpy(positions).to(device)
    best = float("inf")
    with set_forward_context(metadata):
        for _ in range(repeats):
            start = time.perf_counter()
            model.compute_logits(model(ids, pos))
            best = min(best, time.perf_counter() - start)
    return best
