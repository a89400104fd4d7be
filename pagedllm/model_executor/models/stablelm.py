"""StableLM (2 / Zephyr / 3B-4E1T): Llama's gated MLP and attention under LayerNorms (with
bias), rotary on the first `partial_rotary_factor` of each head, optional q/k/v bias, optional
per-head LayerNorm of q and k (one weight per head, no bias: `qk_layernorm`) and, with
`use_parallel_residual`, attention and MLP reading the same normed input: x + attn(ln(x)) +
mlp(ln(x)).

LayerNorm is not a norm the fused CPU stack computes, so StableLM runs eagerly (logged).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

from pagedllm.model_executor.layers.layernorm import LayerNorm, PerHeadLayerNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class StableLmAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix, qkv_bias=config.use_qkv_bias)
        self.q_layernorm = self.k_layernorm = None
        if config.qk_layernorm:
            num_kv_heads = config.num_key_value_heads or config.num_attention_heads
            eps = config.layer_norm_eps
            self.q_layernorm = PerHeadLayerNorm(config.num_attention_heads, self.head_dim, eps)
            self.k_layernorm = PerHeadLayerNorm(num_kv_heads, self.head_dim, eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        if self.q_layernorm is not None and self.k_layernorm is not None:
            q, k = self.q_layernorm(q.contiguous()), self.k_layernorm(k.contiguous())
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))


class StableLmDecoderLayer(LlamaDecoderLayer):
    norm_cls = LayerNorm

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        self.use_parallel_residual = config.use_parallel_residual
        if self.use_parallel_residual:
            del self.post_attention_layernorm  # one norm feeds both sub-blocks

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        return StableLmAttention(config, rotary_emb, layer_idx, prefix)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.use_parallel_residual:
            return super().forward(positions, hidden_states, residual)
        normed, residual = self.input_layernorm(hidden_states, residual)
        return self.self_attn(positions, normed) + self.mlp(normed), residual


class StableLmModel(LlamaModel):
    decoder_layer_cls = StableLmDecoderLayer
    norm_cls = LayerNorm


_PER_HEAD_NORM = re.compile(r"(.*\.(?:q|k)_layernorm)\.norms\.(\d+)\.weight$")


class StableLmForCausalLM(LlamaForCausalLM):
    supports_tensor_parallel = True  # (each rank holds its heads' q/k norm rows)
    model_cls = StableLmModel

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(
            self, weights, self.packed_modules_mapping, self._skip,
            name_mappers=[self._per_head_norm],
        )  # fmt: skip

    def _per_head_norm(self, name: str) -> tuple[str, Any, int] | None:
        """`...q_layernorm.norms.3.weight` -> row 3 of our `...q_layernorm.weight`."""
        match = _PER_HEAD_NORM.match(name)
        if match is None:
            return None
        # (a shard per checkpoint head: a tensor-parallel rank loads its own heads' rows)
        return f"{match[1]}.weight", int(match[2]), self.get_submodule(match[1]).num_heads
