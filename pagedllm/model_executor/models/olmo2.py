"""OLMo 2: Llama's attention and MLP in a post-norm block, x + norm(attn(x)) then
x + norm(mlp(x)) (no norm on the sub-block inputs), with q and k each RMS-normed over the whole
projection (all heads together, before rotary) rather than per head.

Its block is not one the fused CPU stack computes, so it runs eagerly (the worker logs why).
"""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class Olmo2Attention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        bias = getattr(config, "attention_bias", False)
        super().__init__(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias)
        q_size, kv_size = self.split_sizes[0], self.split_sizes[1]
        self.q_norm = RMSNorm(q_size, config.rms_norm_eps)  # over [T, H * D], not per head
        self.k_norm = RMSNorm(kv_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        # NOTE: contiguous copies: the norms' kernel reads whole rows (q, k are views of qkv)
        (q, _), (k, _) = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))


class Olmo2DecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        del self.input_layernorm  # OLMo 2 norms the sub-block outputs only
        self.post_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        return Olmo2Attention(config, rotary_emb, layer_idx, prefix)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the stream so far is hidden_states + residual; return (this layer's MLP part, the rest)
        stream = hidden_states if residual is None else hidden_states + residual
        attn_out, _ = self.post_attention_layernorm(self.self_attn(positions, stream))
        stream = stream + attn_out
        mlp_out, _ = self.post_feedforward_layernorm(self.mlp(stream))
        return mlp_out, stream


class Olmo2Model(LlamaModel):
    decoder_layer_cls = Olmo2DecoderLayer


class Olmo2ForCausalLM(LlamaForCausalLM):
    supports_tensor_parallel = False  # q/k norms span all heads
    model_cls = Olmo2Model
