"""Bidirectional attention of encoder-only models over a packed batch, without a KV cache.

The step's prompts are packed back to back ([T, hidden] rows); each token attends to every token
of its own prompt and to no other. Each prompt's attention is its own SDPA call on its own rows:

    tokens   a0 a1 a2 | b0 b1       SDPA(a0..a2), then SDPA(b0..b1)

One call over all T rows with a block-diagonal mask would give different bits for a prompt
depending on what was packed beside it (the kernel's key blocks and online-softmax rescaling
span the whole row of T keys, masked or not), and costs T^2 where the prompts need sum(L^2).
A prompt's rows keep the same layout alone or packed, so its embedding is the same bits in any
batch (the batch-invariance promise, kept on the embedding path too).
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
    spans: list[tuple[int, int]]  # the same boundaries, (start, end) per prompt, on the host

    @classmethod
    def build(cls, seq_lens: list[int], device: torch.device) -> EncoderAttentionMetadata:
        lens = torch.tensor(seq_lens, dtype=torch.long, device=device)
        query_start_loc = torch.zeros(len(seq_lens) + 1, dtype=torch.long, device=device)
        torch.cumsum(lens, 0, out=query_start_loc[1:])
        spans, start = [], 0
        for n in seq_lens:
            spans.append((start, start + n))
            start += n
        return cls(query_start_loc, spans)


class EncoderAttention(nn.Module):
    """softmax(q k^T * scale) v within each prompt of the step's forward context."""

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
        out = torch.empty_like(query)
        for start, end in metadata.spans:
            n = end - start
            q, k, v = (x[start:end].view(n, self.num_heads, self.head_size).transpose(0, 1)
                       for x in (query, key, value))  # [H, n, D]
            attended = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            out[start:end] = attended.transpose(0, 1).reshape(n, self.num_heads * self.head_size)
        return out
