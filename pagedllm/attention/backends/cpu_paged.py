"""Paged attention for CPUs on pagedllm's compiled kernel (kernels/csrc/paged_attention.cpp).

One kernel call per layer attends every request of the step, prefill chunks and decodes alike,
reading K/V in place through the block table: no gather copy, no Python loop per request, no
per-step metadata beyond what CommonAttentionMetadata already holds. It covers float32 queries
over float32, float16 and int8 caches (the kernel dequantizes int8 rows, values and per-(token,
head) scale, as it reads them: the same bits as the float32 kernel over load_kv's dequantized
cache), and over fp8 caches through a float32 copy of the step's blocks (dequantized per
element, so a token's attention stays the same bits whatever the batch, which SDPA's blocking by
query count does not give). It declares what it supports (float32
models on the CPU, kernels built); the selector sends anything else to torch_sdpa at start-up, so
a forward never checks. Tested against the reference backend (torch_ref).
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
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.attention.ops.kv_quant import is_quantized_kv, load_kv
from pagedllm.kernels import cpu_kernels_available
from pagedllm.utils.math import cdiv


@dataclass
class CpuPagedMetadata:
    common: CommonAttentionMetadata
    """What the kernel reads: block table, sequence lengths, query starts."""
    _step_blocks: tuple[torch.Tensor, torch.Tensor] | None = None

    def step_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For fp8 caches, built once per step: the ids of the step's blocks [num_reqs *
        max_blocks] (long), and the block table [num_reqs, max_blocks] (int32) that indexes a
        cache gathered in that order."""
        if self._step_blocks is None:
            common = self.common
            max_blocks = cdiv(max(common.seq_lens_cpu), common.block_size)
            table = common.block_table[: common.num_reqs, :max_blocks]
            ids = table.reshape(-1).long()
            local = torch.arange(ids.numel(), dtype=torch.int32, device=table.device)
            self._step_blocks = ids, local.view_as(table)
        return self._step_blocks


class CpuPagedMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> CpuPagedMetadata:
        return CpuPagedMetadata(common)


class CpuPagedAttentionImpl(AttentionImpl):
    def forward(self, query, key, value, kv_cache, attn_metadata):
        md: CpuPagedMetadata = attn_metadata
        common = md.common
        write_to_paged_cache(key, value, kv_cache, common.slot_mapping)
        if kv_cache.dtype == torch.float8_e4m3fn:  # (int8 rows: read by the kernel itself)
            ids, block_table = md.step_blocks()
            # dequantized per element, so a token's attention is the same bits in any batch
            key_cache = load_kv(kv_cache[0][ids], torch.float32)
            value_cache = load_kv(kv_cache[1][ids], torch.float32)
        else:
            key_cache, value_cache, block_table = kv_cache[0], kv_cache[1], common.block_table
        return torch.ops.pagedllm.paged_attention(
            query[: common.num_actual_tokens], key_cache, value_cache, block_table,
            common.seq_lens, common.query_start_loc, self.scale, self.sliding_window or 0,
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

    @classmethod
    def supports_device(cls, device_type: str) -> bool:
        return device_type == "cpu"

    @classmethod
    def supports_dtype(cls, dtype: torch.dtype) -> bool:
        return dtype == torch.float32

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype: torch.dtype) -> bool:
        return kv_cache_dtype in (torch.float32, torch.float16) or is_quantized_kv(kv_cache_dtype)

    @classmethod
    def kv_cache_path(cls, kv_cache_dtype: torch.dtype) -> str | None:
        if kv_cache_dtype == torch.int8:
            return "int8 KV cache read in place by the kernel (rows dequantized per chunk)"
        if kv_cache_dtype == torch.float8_e4m3fn:
            return "fp8 KV cache: the step's blocks gathered and dequantized to float32 first"
        if kv_cache_dtype == torch.float16:
            return "float16 KV cache read in place by the kernel"
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if cpu_kernels_available() else "the compiled CPU kernels are not built"
