"""Pooler: the hidden states of a packed batch -> one vector per prompt.

Normalization and Matryoshka truncation are per request (PoolingParams) and happen on the output
side (pooling_params.finish_embedding); the pooler returns the raw pooled states.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.config.pooler import PoolingType


class Pooler(nn.Module):
    def __init__(self, pooling_type: PoolingType) -> None:
        super().__init__()
        self.pooling_type = pooling_type

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, hidden], prompts packed back to back
        query_start_loc: torch.Tensor,  # [B + 1] long
    ) -> torch.Tensor:  # [B, hidden] float32
        hidden_states = hidden_states.float()
        starts, ends = query_start_loc[:-1], query_start_loc[1:]
        if self.pooling_type == "CLS":
            return hidden_states[starts]
        if self.pooling_type == "LAST":
            return hidden_states[ends - 1]
        lens = ends - starts
        seq_of_token = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)
        sums = torch.zeros(len(lens), hidden_states.shape[1], device=hidden_states.device)
        sums.index_add_(0, seq_of_token, hidden_states)
        return sums / lens[:, None].to(sums.dtype)

    def extra_repr(self) -> str:
        return f"pooling_type={self.pooling_type}"
