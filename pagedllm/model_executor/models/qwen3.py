"""Qwen3: Llama with an RMSNorm over each head of q and k before rotary (no q/k/v bias unless
`attention_bias`)."""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class Qwen3DecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = config.attention_bias
        return LlamaAttention(
            config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias, qk_norm=RMSNorm
        )


class Qwen3Model(LlamaModel):
    decoder_layer_cls = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
