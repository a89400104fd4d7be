"""Cross-attention of an encoder-decoder's decoder (BART, T5): each request's query rows attend
to its own encoder output's K/V, every encoder position, no mask and no cache write.

The K/V are computed once per request from the encoder output (the model's `cross_kv`) and
kept by the runner (worker/encoder_decoder.py); each step hands the layers the scheduled
requests' K/V in packing order:

    queries   | r0 chunk (3 rows) | r1 (1 row) | r2 (1 row) |
    K/V       | r0: [S0, H, D]    | r1: [S1..] | r2: [S2..] |   (per decoder layer)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CrossKV = list[tuple[torch.Tensor, torch.Tensor]]
"""One request's cross-attention K and V per decoder layer: ([S, H, D], [S, H, D]) each."""


@dataclass
class CrossAttentionBatch:
    query_start_loc: list[int]
    """[R + 1]: request i's query rows are query_start_loc[i]:query_start_loc[i + 1]."""
    kv: list[CrossKV]
    """[R]: each scheduled request's per-layer K/V, in packing order."""


def cross_attend(
    query: torch.Tensor,  # [T, H * D]
    batch: CrossAttentionBatch,
    layer: int,
    num_heads: int,
    scale: float,
) -> torch.Tensor:  # [T, H * D]
    out = torch.empty_like(query)
    qsl = batch.query_start_loc
    for i, per_layer in enumerate(batch.kv):
        start, end = qsl[i], qsl[i + 1]
        if start == end:
            continue
        k, v = per_layer[layer]  # [S, H, D]
        q = query[start:end].view(end - start, num_heads, -1).transpose(0, 1)  # [H, n, D]
        o = F.scaled_dot_product_attention(q, k.transpose(0, 1), v.transpose(0, 1), scale=scale)
        out[start:end] = o.transpose(0, 1).reshape(end - start, -1)
    return out
