"""Gemma 2: Gemma with "sandwich" norms (each sub-block's output normalized again before the
residual add), attention and final logit soft-capping, attention scaled by
query_pre_attn_scalar ** -0.5, and sliding-window layers alternating with global ones
(`layer_types`)."""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.gemma import GemmaDecoderLayer, GemmaForCausalLM, GemmaModel
from pagedllm.model_executor.models.llama import LlamaAttention


class Gemma2DecoderLayer(GemmaDecoderLayer):
    """x + post_attention_norm(attn(input_norm(x))), then
    x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        self.pre_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = config.attention_bias
        return LlamaAttention(
            config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias,
            scale=config.query_pre_attn_scalar**-0.5,
            logits_soft_cap=config.attn_logit_softcapping,
        )  # fmt: skip

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: the sandwich norms through the module (no residual: (norm(x), x)), so they run
        # the compiled kernel the fused CPU stack runs for them
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, _ = self.post_attention_layernorm(hidden_states)
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        hidden_states, _ = self.post_feedforward_layernorm(self.mlp(hidden_states))
        return hidden_states, residual


class Gemma2Model(GemmaModel):
    decoder_layer_cls = Gemma2DecoderLayer


class Gemma2ForCausalLM(GemmaForCausalLM):
    """Final logits soft-capped by `final_logit_softcapping` (see LlamaForCausalLM)."""

    model_cls = Gemma2Model
