"""8-bit KV cache: K/V stored as int8 or fp8 (e4m3) with one float32 scale per token and head.

The scale travels in the same tensor, right after the values it scales, so a quantized cache is
still one tensor per layer in the backend's usual layout, only D + 4 wide:

    kv_cache: [2, num_blocks, block_size, num_kv_heads, D + 4]   (int8 / float8_e4m3fn)
    one slot, one head:  [ q_0  q_1  ...  q_{D-1} | scale as 4 raw bytes (float32) ]
    value_d = q_d * scale,   scale = max_d |x_d| / QMAX   (QMAX: 127 for int8, 448 for e4m3)

Writers quantize (`quantize_kv`), readers dequantize after gathering blocks (`load_kv`).
"""

from __future__ import annotations

import torch

SCALE_BYTES = 4
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
"""--kv-cache-dtype -> storage dtype of a quantized cache."""


def is_quantized_kv(dtype: torch.dtype) -> bool:
    return dtype in _QMAX


def kv_cache_head_size(head_size: int, dtype: torch.dtype) -> int:
    """Last-dim width of the cache: the head plus, when quantized, its scale's bytes."""
    return head_size + SCALE_BYTES if is_quantized_kv(dtype) else head_size


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, H, D] float -> [T, H, D + 4] int8 bytes of the cache encoding (see module doc)."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / _QMAX[dtype]).clamp_min(1e-12)  # [T, H, 1]
    q = xf / scale
    if dtype == torch.int8:
        q = q.round_().clamp_(-127, 127).to(torch.int8)
    else:
        q = q.clamp_(-448, 448).to(dtype).view(torch.int8)
    return torch.cat([q, scale.view(torch.int8)], dim=-1)


def load_kv(stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Gathered cache entries [..., D (+ 4)] -> [..., D] in `dtype` (dequantized if needed)."""
    if not is_quantized_kv(stored.dtype):
        return stored.to(dtype)
    scale = stored[..., -SCALE_BYTES:].contiguous().view(torch.float32)  # [..., 1]
    return stored[..., :-SCALE_BYTES].to(dtype) * scale.to(dtype)
