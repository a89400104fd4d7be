"""Qwen2 / Qwen2.5: Llama with a bias on the q/k/v projections (none on o_proj), and optional
sliding-window layers (`use_sliding_window`, `layer_types`)."""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class Qwen2DecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        return LlamaAttention(config, rotary_emb, layer_idx, prefix, qkv_bias=True, o_bias=False)


class Qwen2Model(LlamaModel):
    decoder_layer_cls = Qwen2DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2Model
