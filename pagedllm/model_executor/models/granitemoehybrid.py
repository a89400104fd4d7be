"""IBM Granite 4.0 (GraniteMoeHybrid): Bamba's Mamba2 layers and attention layers (rotary, or
none with position_embedding_type "nope"), each followed by a shared SwiGLU MLP plus, when
num_local_experts > 0, a mixture of experts (softmax over the top-k router logits, i.e. the
renormalized top-k softmax); Granite's four multipliers: embeddings times
embedding_multiplier, each sub-block's output times residual_multiplier before the residual
add, attention_multiplier as the softmax scale, logits divided by logits_scaling.

Checkpoint layout: block_sparse_moe.input_linear [E, 2I, H] / output_linear [E, H, I] (stacked,
FusedMoE's layouts) and router.layer [E, H]; shared_mlp.input_linear [2S, H] (gate | up rows)
and output_linear [H, S]. Tensor and pipeline parallelism are not supported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import (
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.mamba_parallel import MAMBA_PARALLEL_REFUSAL
from pagedllm.model_executor.layers.moe import FusedMoE
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.bamba import mamba2_mixer
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


class GraniteHybridMoE(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts,
                                     prefix=f"{prefix}.gate")
        self.experts = FusedMoE(
            config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
            config.intermediate_size, config.hidden_act, renormalize=True,
            prefix=f"{prefix}.experts",
        )  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden_states, self.gate(hidden_states))


class GraniteMoeHybridDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, layer_idx: int,
                 prefix: str) -> None:
        super().__init__()
        self.is_mamba = config.layers_block_type[layer_idx] == "linear_attention"
        if self.is_mamba:
            self.mamba = mamba2_mixer(config, f"{prefix}.mamba")
        else:
            self.self_attn = GraniteHybridAttention(config, rotary_emb, f"{prefix}.self_attn")
        self.moe = (GraniteHybridMoE(config, f"{prefix}.moe")
                    if config.num_local_experts > 0 else None)
        self.shared_mlp = LlamaMLP(config.hidden_size, config.shared_intermediate_size,
                                   config.hidden_act, False, f"{prefix}.shared_mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_multiplier = float(config.residual_multiplier)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        if self.is_mamba:
            hidden_states = self.mamba(hidden_states)
        else:
            hidden_states = self.self_attn(positions, hidden_states)
        # (the norm adds the residual: residual + output * residual_multiplier)
        hidden_states, residual = self.post_attention_layernorm(
            hidden_states * self.residual_multiplier, residual)
        out = self.shared_mlp(hidden_states)
        if self.moe is not None:
            out = out + self.moe(hidden_states)
        return out * self.residual_multiplier, residual


class GraniteMoeHybridModel(nn.Module):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        self.embedding_multiplier = float(config.embedding_multiplier)
        rotary_emb = None
        if config.position_embedding_type == "rope":
            rotary_emb = RotaryEmbedding(head_dim_of(config), max_position,
                                         rope_parameters(config))
        self.layers = nn.ModuleList(
            GraniteMoeHybridDecoderLayer(config, rotary_emb, i, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids) * self.embedding_multiplier
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class GraniteMoeHybridForCausalLM(nn.Module):
    supports_tensor_parallel = False
    supports_pipeline_parallel = False
    parallel_refusal = MAMBA_PARALLEL_REFUSAL
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model = GraniteMoeHybridModel(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size,
                                                scale=1.0 / config.logits_scaling)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        tied = self.tie_word_embeddings
        return load_packed_weights(self, self._rename(weights), self.packed_modules_mapping,
                                   lambda name: tied and name.startswith("lm_head."))

    def _rename(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
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
