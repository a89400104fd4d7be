"""Paged attention for CPUs on pagedllm's compiled kernel (kernels/csrc/paged_attention.cpp).

One kernel call per layer attends every request of the step, prefill chunks and decodes alike,
reading K/V in place through the block table: no gather copy, no Python loop per request, no
per-step metadata beyond what CommonAttentionMetadata already holds. It covers float32 queries
over float32 or float16 caches; anything else (bf16/fp16 models, int8/fp8 KV caches, non-CPU
tensors, kernels that could not be built) takes cpu_sdpa's path. Tested against the reference
backend (torch_ref).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from pagedllm.attention.backends.cpu_sdpa import (
    CpuSdpaAttentionImpl,
    CpuSdpaMetadata,
    CpuSdpaMetadataBuilder,
)
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.kernels import fits_cpu_float32, fits_cpu_kv_cache


@dataclass
class CpuPagedMetadata:
    common: CommonAttentionMetadata
    """What the kernel reads: block table, sequence lengths, query starts."""
    _sdpa: CpuSdpaMetadata | None = None

    def sdpa(self) -> CpuSdpaMetadata:
        """cpu_sdpa's metadata for the layers the kernel does not take, built once per step."""
        if self._sdpa is None:
            self._sdpa = CpuSdpaMetadataBuilder().build(self.common)
        return self._sdpa


class CpuPagedMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> CpuPagedMetadata:
        return CpuPagedMetadata(common)


class CpuPagedAttentionImpl(AttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fallback = CpuSdpaAttentionImpl(*args, **kwargs)

    def forward(self, query, key, value, kv_cache, attn_metadata):
        md: CpuPagedMetadata = attn_metadata
        if not (fits_cpu_float32(query) and fits_cpu_kv_cache(kv_cache)):
            return self._fallback.forward(query, key, value, kv_cache, md.sdpa())
        common = md.common
        write_to_paged_cache(key, value, kv_cache, common.slot_mapping)
        num_tokens = common.num_actual_tokens
        return torch.ops.pagedllm.paged_attention(
            query[:num_tokens], kv_cache[0], kv_cache[1], common.block_table, common.seq_lens,
            common.query_start_loc, self.scale, self.sliding_window or 0,
            self.logits_soft_cap or 0.0,
        )  # fmt: skip


class CpuPagedBackend(AttentionBackend):
    name = "cpu_paged"

    @staticmethod
    def get_builder_cls():
        return CpuPagedMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return CpuPagedAttentionImpl
