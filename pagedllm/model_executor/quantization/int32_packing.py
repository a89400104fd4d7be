"""Unpacking the int32 words AWQ and GPTQ checkpoints store their 4-bit codes in.

Nibble i of a word is bits 4i..4i+3 (i = 0 the least significant).

    GPTQ qweight [K / 8, N]:  word [r, n]  holds W codes of input rows 8r .. 8r+7, nibble i = 8r+i
    GPTQ qzeros  [G, N / 8]:  word [g, c]  holds zeros of output cols 8c .. 8c+7, nibble i = 8c+i
    AWQ  qweight [K, N / 8]:  word [k, c]  holds output cols 8c + AWQ_ORDER[i] in nibble i
    AWQ  qzeros  [G, N / 8]:  same interleaving as AWQ qweight
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""AWQ ("gemm" version) packs output columns 0,2,4,6,1,3,5,7 of each group of 8 into nibbles
0..7 of a word."""


def unpack_nibbles(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 [..] -> uint8 codes with `dim` 8x longer, nibble i of word j at index 8j + i."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    w = words.to(torch.int32).unsqueeze(dim + 1 if dim >= 0 else dim)  # new axis after `dim`
    shape = [1] * w.dim()
    shape[dim + 1 if dim >= 0 else dim] = 8
    codes = (w >> shifts.view(shape)) & 0xF
    return codes.flatten(dim, dim + 1 if dim >= 0 else dim).to(torch.uint8)


def undo_awq_order(codes: torch.Tensor) -> torch.Tensor:
    """[.., N] codes in AWQ's nibble order -> natural column order."""
    n = codes.shape[-1]
    order = torch.tensor(AWQ_ORDER)
    # nibble i of group c holds column 8c + AWQ_ORDER[i]: scatter them back
    columns = (torch.arange(n // 8)[:, None] * 8 + order[None, :]).flatten()
    out = torch.empty_like(codes)
    out[..., columns] = codes
    return out
