"""Hidden states -> float32 logits over the vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.model_executor.layers.embedding import VocabParallelEmbedding


class LogitsProcessor(nn.Module):
    def __init__(self, vocab_size: int, scale: float = 1.0, soft_cap: float | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = scale
        self.soft_cap = soft_cap
        """Gemma 2's final logit soft-capping: cap * tanh(logits / cap); None: off."""

    def forward(
        self,
        lm_head: VocabParallelEmbedding,  # the LM head, or the token embedding when tied
        hidden_states: torch.Tensor,  # [N, hidden]
    ) -> torch.Tensor:  # [N, vocab] float32
        # NOTE: the matmul runs in the model dtype; only its result is upcast (an fp32 copy of
        # the head per step would cost more than the precision gained).
        logits = lm_head.project(hidden_states).float()
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.soft_cap is not None:
            logits = torch.tanh(logits / self.soft_cap) * self.soft_cap
        # (the head's rows past the vocabulary: tensor-parallel padding)
        return logits if logits.shape[1] == self.vocab_size else logits[:, : self.vocab_size]
