"""Gemma 3 text (Gemma3ForCausalLM): Gemma 2's block with a per-head q/k norm instead of attention
soft-capping, and local (sliding-window) / global layers per `layer_types`, each type with its
own rotary base (rope_parameters["sliding_attention"] / ["full_attention"])."""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.layers.layernorm import GemmaRMSNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.models.gemma2 import (
    Gemma2DecoderLayer,
    Gemma2ForCausalLM,
    Gemma2Model,
)
from pagedllm.model_executor.models.llama import LlamaAttention, head_dim_of


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        # NOTE: HF's Gemma 3 does not apply attn_logit_softcapping even if the config sets it.
        bias = config.attention_bias
        return LlamaAttention(
            config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias,
            qk_norm=GemmaRMSNorm, scale=config.query_pre_attn_scalar**-0.5,
        )  # fmt: skip


class Gemma3Model(Gemma2Model):
    decoder_layer_cls = Gemma3DecoderLayer

    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError(
                "Gemma 3 with use_bidirectional_attention=True (an embedding model) is not "
                "supported: the paged attention here is causal"
            )
        super().__init__(config, max_position, prefix)

    def build_rotary_embs(self, config: Any, max_position: int) -> list[RotaryEmbedding]:
        # NOTE: one cos/sin cache per layer type, shared by the layers of that type.
        by_type = {
            layer_type: RotaryEmbedding(
                head_dim_of(config), max_position, rope_parameters(config, layer_type)
            )
            for layer_type in set(config.layer_types)
        }
        return [by_type[layer_type] for layer_type in config.layer_types]


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    model_cls = Gemma3Model
