"""What one layer's KV cache needs per block, for sizing the cache (no tensors here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pagedllm.utils.math import cdiv


@dataclass(frozen=True)
class FullAttentionSpec:
    """A layer that attends to every previous token."""

    block_size: int
    """Tokens per block."""
    num_kv_heads: int
    head_size: int
    dtype_bytes: int
    """Bytes per stored K or V element (2 for fp16/bf16, 1 for int8/fp8)."""

    @property
    def page_size_bytes(self) -> int:
        """Bytes of one block of this layer: K and V, [block_size, num_kv_heads, head_size] each."""
        return 2 * self.block_size * self.num_kv_heads * self.head_size * self.dtype_bytes

    def max_memory_usage_bytes(self, max_model_len: int) -> int:
        """Bytes one request of max_model_len tokens can occupy in this layer."""
        return cdiv(max_model_len, self.block_size) * self.page_size_bytes


@dataclass(frozen=True)
class SlidingWindowSpec(FullAttentionSpec):
    """A layer that attends only to the last `sliding_window` tokens."""

    sliding_window: int = 0
    """Window length in tokens (> 0)."""

    def __post_init__(self) -> None:
        if self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")

    def max_memory_usage_bytes(self, max_model_len: int) -> int:
        # NOTE: +1 block: the window rarely starts on a block boundary.
        num_tokens = min(self.sliding_window, max_model_len)
        return (cdiv(num_tokens, self.block_size) + 1) * self.page_size_bytes


KVCacheSpec = FullAttentionSpec
"""Every spec is a FullAttentionSpec or a subclass of it."""


def page_size_bytes(specs: Sequence[KVCacheSpec]) -> int:
    """Bytes of one block id across all layers (every layer holds one page per block id)."""
    return sum(spec.page_size_bytes for spec in specs)


def num_blocks_for_memory(memory_bytes: int, specs: Sequence[KVCacheSpec]) -> int:
    """How many block ids fit in memory_bytes, all layers together."""
    per_block = page_size_bytes(specs)
    if per_block <= 0:
        raise ValueError("no KV cache specs: cannot size the cache")
    return memory_bytes // per_block
