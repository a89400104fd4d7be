"""Paged attention for CPUs on pagedllm's compiled kernel (kernels/csrc/paged_attention.cpp).

One kernel call per layer attends every request of the step, prefill chunks and decodes alike,
reading K/V in place through the block table: no gather copy, no Python loop per request, no
per-step metadata beyond what CommonAttentionMetadata already holds. It covers float32 queries
and caches; anything else (bf16/fp16 models, int8/fp8 KV caches, non-CPU tensors, kernels that
could not be built) takes cpu_sdpa's path. Tested against the reference backend (torch_ref).
"""

from __future__ import annotations

import torch

from pagedllm.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from pagedllm.attention.backends.cpu_sdpa import CpuSdpaAttentionImpl, CpuSdpaMetadataBuilder
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.kernels import cpu_kernels_available


class CpuPagedMetadataBuilder(AttentionMetadataBuilder):
    def __init__(self) -> None:
        self._fallback = CpuSdpaMetadataBuilder()

    def build(self, common: CommonAttentionMetadata):
        if cpu_kernels_available() and common.block_table.device.type == "cpu":
            return common
        return self._fallback.build(common)


class CpuPagedAttentionImpl(AttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fallback = CpuSdpaAttentionImpl(*args, **kwargs)

    def forward(self, query, key, value, kv_cache, attn_metadata):
        if not isinstance(attn_metadata, CommonAttentionMetadata) or not _kernel_fits(
            query, kv_cache
        ):
            if isinstance(attn_metadata, CommonAttentionMetadata):
                attn_metadata = self._fallback_metadata(attn_metadata)
            return self._fallback.forward(query, key, value, kv_cache, attn_metadata)
        md = attn_metadata
        write_to_paged_cache(key, value, kv_cache, md.slot_mapping)
        num_tokens = md.num_actual_tokens
        return torch.ops.pagedllm.paged_attention(
            query[:num_tokens], kv_cache[0], kv_cache[1], md.block_table, md.seq_lens,
            md.query_start_loc, self.scale, self.sliding_window or 0,
            self.logits_soft_cap or 0.0,
        )  # fmt: skip

    def _fallback_metadata(self, common: CommonAttentionMetadata):
        # NOTE: built per layer (only on the rare fallback path: bf16 / quantized KV).
        return CpuSdpaMetadataBuilder().build(common)


def _kernel_fits(query: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    return query.dtype == torch.float32 and kv_cache.dtype == torch.float32 and (
        query.device.type == "cpu"
    )


class CpuPagedBackend(AttentionBackend):
    name = "cpu_paged"

    @staticmethod
    def get_builder_cls():
        return CpuPagedMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return CpuPagedAttentionImpl
