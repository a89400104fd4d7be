"""Qwen2-MoE: Qwen2 whose MLP is, on its sparse layers, a mixture of experts plus one shared
expert: the top num_experts_per_tok of num_experts SwiGLU experts (moe_intermediate_size) by
softmax routing (renormalized over the k when norm_topk_prob), added to a shared SwiGLU expert
scaled by sigmoid(shared_expert_gate(x)).

A layer is sparse unless listed in mlp_only_layers, every decoder_sparse_step-th layer; the others
keep a dense MLP of intermediate_size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.linear import ReplicatedLinear
from pagedllm.model_executor.layers.moe import ExpertWeightMapper, FusedMoE
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
)
from pagedllm.model_executor.models.qwen2 import Qwen2DecoderLayer


def is_sparse_layer(config: Any, layer_idx: int) -> bool:
    """Whether layer `layer_idx` has the MoE block (Qwen2-MoE / Qwen3-MoE's rule)."""
    return (
        layer_idx not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (layer_idx + 1) % config.decoder_sparse_step == 0
    )


class Qwen2MoeSparseMoeBlock(nn.Module):
    """Routed experts, plus the gated shared expert when shared_expert_intermediate_size > 0
    (Qwen3-MoE has none)."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        # the router: replicated, never quantized (see quantization.base.ROUTER_GATES)
        self.gate = ReplicatedLinear(hidden, config.num_experts, prefix=f"{prefix}.gate")
        self.experts = FusedMoE(
            config.num_experts, config.num_experts_per_tok, hidden,
            config.moe_intermediate_size, config.hidden_act, renormalize=config.norm_topk_prob,
            prefix=f"{prefix}.experts",
        )  # fmt: skip
        shared_size = getattr(config, "shared_expert_intermediate_size", 0)
        self.shared_expert = None
        self.shared_expert_gate = None
        if shared_size:
            self.shared_expert = LlamaMLP(
                hidden, shared_size, config.hidden_act, bias=False, prefix=f"{prefix}.shared_expert"
            )
            self.shared_expert_gate = ReplicatedLinear(
                hidden, 1, prefix=f"{prefix}.shared_expert_gate"
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        out = self.experts(hidden_states, self.gate(hidden_states))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            shared_gate = torch.sigmoid(self.shared_expert_gate(hidden_states))  # [T, 1]
            out = out + shared_gate * self.shared_expert(hidden_states)
        return out


class Qwen2MoeDecoderLayer(Qwen2DecoderLayer):
    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        if is_sparse_layer(config, layer_idx):
            return Qwen2MoeSparseMoeBlock(config, prefix)
        return super().build_mlp(config, layer_idx, prefix)

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = getattr(config, "qkv_bias", True)
        return LlamaAttention(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=False)


class Qwen2MoeModel(LlamaModel):
    decoder_layer_cls = Qwen2MoeDecoderLayer


class Qwen2MoeForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2MoeModel

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """Per-expert gate_proj / up_proj / down_proj into the stacked experts (a GGUF's experts,
        stacked per projection, are split per expert first); the rest (shared expert included)
        as Llama's."""
        from pagedllm.model_executor.models.deepseek_v2 import _from_llama_cpp_layout

        experts = ExpertWeightMapper(
            self.config.num_experts, gate="gate_proj", up="up_proj", down="down_proj"
        )
        return load_packed_weights(self, _from_llama_cpp_layout(weights),
                                   self.packed_modules_mapping, self._skip,
                                   name_mappers=[experts])  # fmt: skip
