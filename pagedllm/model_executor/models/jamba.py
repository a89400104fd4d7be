"""Jamba: a hybrid of Mamba and attention decoder layers (AI21).

Layer i attends when i % attn_layer_period == attn_layer_offset and is a Mamba mixer otherwise
(layers/mamba.py, its states in the per-request state cache); its feed-forward block is a
mixture of experts when i % expert_layer_period == expert_layer_offset (softmax top-k routing,
the k weights NOT renormalized) and a dense SwiGLU MLP otherwise. Attention has no positional
encoding at all (the Mamba layers carry the order). Pre-norm blocks, as Llama's.

The model loop, the CausalLM wrapper and the router-plus-experts block are the hybrids' shared
ones (hybrid_common.py). -tp splits every layer; -pp is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.model_executor.layers.mamba import MambaMixer
from pagedllm.model_executor.layers.moe import ExpertWeightMapper
from pagedllm.model_executor.layers.weight_utils import NameMapper
from pagedllm.model_executor.models.hybrid_common import (
    HybridDecoderLayer,
    HybridDecoderModel,
    HybridForCausalLM,
    RouterExperts,
)
from pagedllm.model_executor.models.llama import LlamaMLP, head_dim_of


class JambaAttention(nn.Module):
    """qkv -> paged attention -> o_proj; no rotary (Jamba's attention is position-free)."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = config.num_key_value_heads
        head_dim = head_dim_of(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads,
                                          False, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(num_heads * head_dim, config.hidden_size, False,
                                        prefix=f"{prefix}.o_proj")
        self.split_sizes = list(self.qkv_proj.output_sizes_per_partition)
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_kv_heads,
                              prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        return self.o_proj(self.attn(q, k, v))  # (positions unused)


def mamba_mixer(config: Any, prefix: str) -> MambaMixer:
    return MambaMixer(
        config.hidden_size, config.mamba_expand * config.hidden_size, config.mamba_d_state,
        config.mamba_d_conv, config.mamba_dt_rank, config.mamba_conv_bias,
        config.mamba_proj_bias, bc_dt_norm_eps=config.rms_norm_eps, prefix=prefix,
    )  # fmt: skip


class JambaDecoderLayer(HybridDecoderLayer):
    """x + mixer(norm(x)), then + feed_forward(norm(.)); the mixer is `mamba` or `self_attn`."""

    def __init__(self, config: Any, layer_idx: int, prefix: str) -> None:
        super().__init__()
        self.is_mamba = config.layers_block_type[layer_idx] == "mamba"
        if self.is_mamba:
            self.mamba = mamba_mixer(config, f"{prefix}.mamba")
        else:
            self.self_attn = JambaAttention(config, f"{prefix}.self_attn")
        if config.layers_num_experts[layer_idx] > 1:
            self.feed_forward: nn.Module = RouterExperts(
                config.hidden_size, config.num_experts, config.num_experts_per_tok,
                config.intermediate_size, config.hidden_act, renormalize=False,
                prefix=f"{prefix}.feed_forward", router_name="router")
        else:
            self.feed_forward = LlamaMLP(config.hidden_size, config.intermediate_size,
                                         config.hidden_act, False, f"{prefix}.feed_forward")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class JambaModel(HybridDecoderModel):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        # (max_position unused: Jamba's attention has no positional encoding)
        super().__init__(config, lambda i, p: JambaDecoderLayer(config, i, p), prefix=prefix,
                         norm_name="final_layernorm")


class JambaForCausalLM(HybridForCausalLM):
    model_cls = JambaModel

    def weight_name_mappers(self) -> Sequence[NameMapper]:
        return [ExpertWeightMapper(self.config.num_experts, gate="gate_proj", up="up_proj",
                                   down="down_proj")]
