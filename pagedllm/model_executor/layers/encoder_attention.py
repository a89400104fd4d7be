"""Bidirectional attention of encoder-only models over a packed batch, without a KV cache.

The step's prompts are packed back to back; each token attends to every token of its own prompt
and to no other (a block-diagonal mask), so many texts run in one SDPA call:

    tokens   a0 a1 a2 b0 b1        mask (True = may attend)
    a0..a2   1  1  1  0  0
    b0..b1   0  0  0  1  1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.forward_context import get_forward_context


@dataclass
class EncoderAttentionMetadata:
    query_start_loc: torch.Tensor  # [B + 1] long: prompt i owns rows start[i]:start[i+1]
    attn_mask: torch.Tensor  # [T, T] bool, block-diagonal

    @classmethod
    def build(cls, seq_lens: list[int], device: torch.device) -> EncoderAttentionMetadata:
        lens = torch.tensor(seq_lens, dtype=torch.long, device=device)
        query_start_loc = torch.zeros(len(seq_lens) + 1, dtype=torch.long, device=device)
        torch.cumsum(lens, 0, out=query_start_loc[1:])
        seq_of_token = torch.repeat_interleave(torch.arange(len(seq_lens), device=device), lens)
        attn_mask = seq_of_token[:, None] == seq_of_token[None, :]  # [T, T]
        return cls(query_start_loc, attn_mask)


class EncoderAttention(nn.Module):
    """softmax(q k^T * scale + mask) v within each prompt of the step's forward context."""

    def __init__(self, num_heads: int, head_size: int, scale: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads * head_size]
        key: torch.Tensor,  # [T, num_heads * head_size]
        value: torch.Tensor,  # [T, num_heads * head_size]
    ) -> torch.Tensor:  # [T, num_heads * head_size]
        metadata: EncoderAttentionMetadata = get_forward_context().attn_metadata
        num_tokens = query.shape[0]
        q, k, v = (x.view(num_tokens, self.num_heads, self.head_size).transpose(0, 1)
                   for x in (query, key, value))  # [H, T, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=metadata.attn_mask,
                                             scale=self.scale)
        return out.transpose(0, 1).reshape(num_tokens, self.num_heads * self.head_size)
