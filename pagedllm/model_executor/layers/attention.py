"""Attention layer: hands q/k/v to the selected backend, which writes the paged KV cache and
attends through the block tables of this step's forward context."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.attention.backend import AttentionBackend, AttentionImpl
from pagedllm.distributed import divide, get_tensor_model_parallel_world_size, kv_heads_per_rank
from pagedllm.forward_context import get_forward_context


class Attention(nn.Module):
    """num_heads / num_kv_heads: the model's; under tensor parallelism the layer attends over
    this rank's share of them (the heads its QKVParallelLinear produces) and its KV cache holds
    only those."""

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        self.num_heads = divide(num_heads, tp_size)
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = kv_heads_per_rank(num_kv_heads, tp_size)
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
        self.layer_name = prefix
        self.impl: AttentionImpl | None = None
        # Bound by the model runner once the cache is allocated (not a parameter or buffer: it
        # must not be saved, moved or cast with the model).
        self.kv_cache: torch.Tensor | None = None

    def bind(self, backend: type[AttentionBackend], kv_cache: torch.Tensor) -> None:
        self.impl = backend.get_impl_cls()(
            self.num_heads,
            self.head_size,
            self.scale,
            self.num_kv_heads,
            self.sliding_window,
            self.logits_soft_cap,
        )
        self.kv_cache = kv_cache

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads * head_size]
        key: torch.Tensor,  # [T, num_kv_heads * head_size]
        value: torch.Tensor,  # [T, num_kv_heads * head_size]
    ) -> torch.Tensor:  # [T, num_heads * head_size]
        assert self.impl is not None and self.kv_cache is not None, "attention layer not bound"
        metadata = get_forward_context().attn_metadata
        num_tokens = query.shape[0]
        out = self.impl.forward(
            query.view(num_tokens, self.num_heads, self.head_size),
            key.view(num_tokens, self.num_kv_heads, self.head_size),
            value.view(num_tokens, self.num_kv_heads, self.head_size),
            self.kv_cache,
            metadata,
        )
        return out.reshape(num_tokens, self.num_heads * self.head_size)


def layer_sliding_window(hf_config: Any, layer_idx: int) -> int | None:
    """The window (in tokens) layer `layer_idx` attends over; None for full attention.

    Configs with `layer_types` (Qwen2/3, Gemma 2/3, ...) window only their "sliding_attention"
    layers; others (Mistral) window every layer when `sliding_window` is set.
    """
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if window is None or layer_types is None:
        return window
    return window if layer_types[layer_idx] == "sliding_attention" else None


def attention_layers(model: nn.Module) -> list[Attention]:
    """The model's attention layers in forward order (the order of their KV caches)."""
    return [m for m in model.modules() if isinstance(m, Attention)]
