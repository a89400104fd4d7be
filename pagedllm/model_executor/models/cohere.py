"""Cohere Command-R: one LayerNorm (weight, no bias) feeding attention and the gated SiLU MLP
in parallel, x + attn(ln(x)) + mlp(ln(x)); rotary pairing adjacent dims (GPT-J style), optional
per-head q/k LayerNorm (`use_qk_norm`, one weight per head), the LM head tied to the embedding
and the logits multiplied by `logit_scale`.

The interleaved rotary becomes our rotate-half one by reordering the q/k rows (and the q/k norm
weights, which are per dim) at load. Its block is not one the fused CPU stack computes, so it
runs eagerly (the worker logs why).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.layernorm import LayerNormNoBias, PerHeadLayerNorm
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, interleaved_to_neox_rows
from pagedllm.model_executor.layers.weight_utils import take_rows
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    head_dim_of,
)

_ROTATED = (".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.q_norm.",
            ".self_attn.k_norm.")  # fmt: skip
"""Checkpoint tensors whose rows (per head, per dim) follow the interleaved rotary layout."""


class CohereAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        bias = config.attention_bias
        super().__init__(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias)
        if config.use_qk_norm:
            num_kv_heads = config.num_key_value_heads or config.num_attention_heads
            eps = config.layer_norm_eps
            self.q_norm = PerHeadLayerNorm(config.num_attention_heads, self.head_dim, eps)
            self.k_norm = PerHeadLayerNorm(num_kv_heads, self.head_dim, eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))


class CohereDecoderLayer(LlamaDecoderLayer):
    norm_cls = LayerNormNoBias

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        del self.post_attention_layernorm  # one norm feeds both sub-blocks

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        return CohereAttention(config, rotary_emb, layer_idx, prefix)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = self.input_layernorm(hidden_states, residual)
        return self.self_attn(positions, normed) + self.mlp(normed), residual


class CohereModel(LlamaModel):
    decoder_layer_cls = CohereDecoderLayer
    norm_cls = LayerNormNoBias


class CohereForCausalLM(LlamaForCausalLM):
    supports_tensor_parallel = True  # (each rank holds its heads' q/k norm rows)
    model_cls = CohereModel

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__(model_config)
        config = model_config.hf_config
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=config.logit_scale)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return super().load_weights(self._to_rotate_half(weights))

    def _to_rotate_half(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """q/k rows (and the per-dim q/k norm weights) reordered by index, so a GGUF weight
        still in its quantized blocks (--quantization gguf) moves whole rows of blocks."""
        head_dim = head_dim_of(self.config)
        # (the first layer of this pipeline stage: the others' slots hold no modules)
        rotary_dim = self.model.layers[self.model.start_layer].self_attn.rotary_emb.rotary_dim
        for name, tensor in weights:
            if any(part in name for part in _ROTATED):
                if "_norm." in name:  # [heads, head_dim] float: reorder within each head
                    order = interleaved_to_neox_rows(torch.arange(head_dim), head_dim,
                                                     rotary_dim)  # fmt: skip
                    tensor = _dense(tensor)[..., order]
                else:  # [heads * head_dim, ...] rows
                    order = interleaved_to_neox_rows(torch.arange(tensor.shape[0]), head_dim,
                                                     rotary_dim)  # fmt: skip
                    tensor = take_rows(tensor, order)
            yield name, tensor


def _dense(tensor: Any) -> torch.Tensor:
    return tensor if isinstance(tensor, torch.Tensor) else tensor.dequantize()
