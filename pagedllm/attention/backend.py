"""The attention backend seam.

A backend bundles a KV cache layout (`get_kv_cache_shape`), a metadata builder that turns the
runner's per-step CommonAttentionMetadata into its own metadata once per step, and an impl whose
`forward` writes this step's K/V into the paged cache and attends over it.

Invariant every backend keeps: within one layer, the K/V of *all* tokens of the batch are written
before any attention is computed. Requests that share prefix blocks scheduled in the same step
(n > 1 samples) rely on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CommonAttentionMetadata:
    """Per-step batch layout, shared by all backends. B requests, T tokens this step.

    Tokens are packed request after request: request i owns rows
    query_start_loc[i]:query_start_loc[i+1] of q/k/v, the last `num_query` of its `seq_len` tokens.
    """

    num_actual_tokens: int
    query_start_loc: torch.Tensor  # [B + 1] int32
    query_start_loc_cpu: list[int]
    seq_lens: torch.Tensor  # [B] int32: tokens in context after this step (cached + new)
    seq_lens_cpu: list[int]
    block_table: torch.Tensor  # [B, max_blocks_per_req] int32
    slot_mapping: torch.Tensor  # [T] int64: flat cache slot (block * block_size + offset) per token
    max_query_len: int
    max_seq_len: int
    block_size: int

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_cpu)


class AttentionMetadataBuilder(ABC):
    @abstractmethod
    def build(self, common: CommonAttentionMetadata) -> Any:
        """Backend metadata for this step; called once per step, shared by every layer."""


class AttentionImpl(ABC):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> None:
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_size]
        key: torch.Tensor,  # [T, num_kv_heads, head_size]
        value: torch.Tensor,  # [T, num_kv_heads, head_size]
        kv_cache: torch.Tensor,  # backend's layout, see get_kv_cache_shape
        attn_metadata: Any,
    ) -> torch.Tensor:  # [T, num_heads, head_size]
        """Write key/value at attn_metadata's slot mapping, then attend causally."""


class AttentionBackend(ABC):
    name: str = ""

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        """The standard paged layout: K and V stacked, then blocks of `block_size` slots."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @staticmethod
    @abstractmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]: ...

    @staticmethod
    @abstractmethod
    def get_impl_cls() -> type[AttentionImpl]: ...

    # ---- what the backend supports: the selector checks it once, at start-up, and explains a
    # refusal, so no forward call has to check again --------------------------------------------

    @classmethod
    def supports_device(cls, device_type: str) -> bool:
        return True

    @classmethod
    def supports_dtype(cls, dtype: torch.dtype) -> bool:
        """The model dtype (queries, keys and values)."""
        return dtype in (torch.float32, torch.bfloat16, torch.float16)

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype: torch.dtype) -> bool:
        """The cache's storage dtype (the model dtype, float16, or int8 / fp8 with scales)."""
        return True

    @classmethod
    def supports_head_size(cls, head_size: int) -> bool:
        return True

    @classmethod
    def kv_cache_path(cls, kv_cache_dtype: torch.dtype) -> str | None:
        """How the backend reads a cache of this dtype, for the start-up log (None: plainly)."""
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the backend cannot run on this machine at all (e.g. its kernels are not built)."""
        return None

    @classmethod
    def validate_configuration(
        cls, device_type: str, dtype: torch.dtype, kv_cache_dtype: torch.dtype,
        head_sizes: set[int],
    ) -> list[str]:  # fmt: skip
        """Every reason this backend cannot serve the model; empty if it can."""
        unavailable = cls.unavailable_reason()
        reasons = [unavailable] if unavailable else []
        if not cls.supports_device(device_type):
            reasons.append(f"device {device_type} not supported")
        if not cls.supports_dtype(dtype):
            reasons.append(f"model dtype {_dtype_name(dtype)} not supported")
        if not cls.supports_kv_cache_dtype(kv_cache_dtype):
            reasons.append(f"KV cache dtype {_dtype_name(kv_cache_dtype)} not supported")
        bad_heads = sorted(h for h in head_sizes if not cls.supports_head_size(h))
        if bad_heads:
            reasons.append(f"head size {bad_heads[0]} not supported")
        return reasons


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
