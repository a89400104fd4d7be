"""Writing this step's K/V into the paged cache through the slot mapping."""

from __future__ import annotations

import torch

from pagedllm.attention.ops.kv_quant import is_quantized_kv, quantize_kv


def write_to_paged_cache(
    key: torch.Tensor,  # [T, num_kv_heads, head_size]
    value: torch.Tensor,  # [T, num_kv_heads, head_size]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_size (+ 4)]
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    num_tokens = slot_mapping.shape[0]
    if is_quantized_kv(kv_cache.dtype):  # 8-bit values + scale bytes (see ops/kv_quant.py)
        key = quantize_kv(key[:num_tokens], kv_cache.dtype)
        value = quantize_kv(value[:num_tokens], kv_cache.dtype)
        kv_cache = kv_cache.view(torch.int8)
    key_cache = kv_cache[0].view(-1, *kv_cache.shape[3:])  # [num_slots, Hkv, D]
    value_cache = kv_cache[1].view(-1, *kv_cache.shape[3:])
    key_cache.index_copy_(0, slot_mapping, key[:num_tokens].to(key_cache.dtype))
    value_cache.index_copy_(0, slot_mapping, value[:num_tokens].to(value_cache.dtype))
