"""IBM Granite 4.0 (GraniteMoeHybrid): Bamba's Mamba2 layers and attention layers (rotary, or
none with position_embedding_type "nope"), each followed by a shared SwiGLU MLP plus, when
num_local_experts > 0, a mixture of experts (softmax over the top-k router logits, i.e. the
renormalized top-k softmax); Granite's four multipliers: embeddings times
embedding_multiplier, each sub-block's output times residual_multiplier before the residual
add, attention_multiplier as the softmax scale, logits divided by logits_scaling.

Checkpoint layout: block_sparse_moe.input_linear [E, 2I, H] / output_linear [E, H, I] (stacked,
FusedMoE's layouts) and router.layer [E, H]; shared_mlp.input_linear [2S, H] (gate | up rows)
and output_linear [H, S]. The model loop, the CausalLM wrapper and the router-plus-experts block
are the hybrids' shared ones (hybrid_common.py). -tp splits every layer; -pp is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.models.bamba import mamba2_mixer
from pagedllm.model_executor.models.hybrid_common import (
    HybridDecoderLayer,
    HybridDecoderModel,
    HybridForCausalLM,
    RouterExperts,
)
from pagedllm.model_executor.models.llama import LlamaMLP, head_dim_of

_RENAMES = [
    (re.compile(r"\.block_sparse_moe\.input_linear\.weight$"), ".moe.experts.gate_up_proj"),
    (re.compile(r"\.block_sparse_moe\.output_linear\.weight$"), ".moe.experts.down_proj"),
    (re.compile(r"\.block_sparse_moe\.router\.layer\.weight$"), ".moe.gate.weight"),
    (re.compile(r"\.shared_mlp\.output_linear\.weight$"), ".shared_mlp.down_proj.weight"),
]


class GraniteHybridAttention(nn.Module):
    """qkv -> (rotary) -> paged attention scaled by attention_multiplier -> o_proj."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, prefix: str) -> None:
        super().__init__()
        num_heads, num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = head_dim_of(config)
        bias = config.attention_bias
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads,
                                          bias, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(num_heads * head_dim, config.hidden_size, bias,
                                        prefix=f"{prefix}.o_proj")
        self.split_sizes = list(self.qkv_proj.output_sizes_per_partition)
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, head_dim, config.attention_multiplier, num_kv_heads,
                              prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


class GraniteMoeHybridDecoderLayer(HybridDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, layer_idx: int,
                 prefix: str) -> None:
        super().__init__()
        self.is_mamba = config.layers_block_type[layer_idx] == "linear_attention"
        if self.is_mamba:
            self.mamba = mamba2_mixer(config, f"{prefix}.mamba")
        else:
            self.self_attn = GraniteHybridAttention(config, rotary_emb, f"{prefix}.self_attn")
        self.moe = (RouterExperts(config.hidden_size, config.num_local_experts,
                                  config.num_experts_per_tok, config.intermediate_size,
                                  config.hidden_act, renormalize=True, prefix=f"{prefix}.moe")
                    if config.num_local_experts > 0 else None)
        self.shared_mlp = LlamaMLP(config.hidden_size, config.shared_intermediate_size,
                                   config.hidden_act, False, f"{prefix}.shared_mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.mix(positions, hidden_states)
        # (the norm adds the residual: residual + output * residual_multiplier)
        hidden_states, residual = self.post_attention_layernorm(
            hidden_states * self.residual_multiplier, residual)
        out = self.shared_mlp(hidden_states)
        if self.moe is not None:
            out = out + self.moe(hidden_states)
        return out * self.residual_multiplier, residual


class GraniteMoeHybridModel(HybridDecoderModel):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        rotary_emb = None
        if config.position_embedding_type == "rope":
            rotary_emb = RotaryEmbedding(head_dim_of(config), max_position,
                                         rope_parameters(config))
        super().__init__(
            config, lambda i, p: GraniteMoeHybridDecoderLayer(config, rotary_emb, i, p),
            prefix=prefix, embedding_multiplier=float(config.embedding_multiplier))


class GraniteMoeHybridForCausalLM(HybridForCausalLM):
    model_cls = GraniteMoeHybridModel

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__(model_config, logits_scale=1.0 / model_config.hf_config.logits_scaling)

    def rename_weights(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        for name, tensor in weights:
            if name.endswith(".shared_mlp.input_linear.weight"):
                # gate | up rows: the two shards of our gate_up_proj
                base = name.removesuffix("input_linear.weight")
                gate, up = tensor.chunk(2, dim=0)
                yield f"{base}gate_proj.weight", gate
                yield f"{base}up_proj.weight", up
                continue
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
            yield name, tensor
