"""Bamba (IBM): Mamba2 layers with a few rotary attention layers (attn_layer_indices), a dense
SwiGLU MLP in every layer; pre-norm blocks as Llama's. The Mamba2 mixers keep their states in
the per-request state cache (layers/mamba2.py); attention rotates half of each head
(partial_rotary_factor 0.5, which transformers' BambaConfig sets).

Tensor and pipeline parallelism are not supported (the mixers are replicated layers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.mamba2 import Mamba2Mixer
from pagedllm.model_executor.layers.mamba_parallel import MAMBA_PARALLEL_REFUSAL
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import LlamaAttention, LlamaMLP, head_dim_of


def mamba2_mixer(config: Any, prefix: str) -> Mamba2Mixer:
    return Mamba2Mixer(
        config.hidden_size, int(config.mamba_expand * config.hidden_size), config.mamba_n_heads,
        config.mamba_d_head, config.mamba_n_groups, config.mamba_d_state, config.mamba_d_conv,
        config.mamba_conv_bias, config.mamba_proj_bias, config.rms_norm_eps,
        config.time_step_limit, prefix,
    )  # fmt: skip


class BambaDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int,
                 prefix: str) -> None:
        super().__init__()
        self.is_mamba = config.layers_block_type[layer_idx] == "linear_attention"
        if self.is_mamba:
            self.mamba = mamba2_mixer(config, f"{prefix}.mamba")
        else:
            bias = config.attention_bias
            self.self_attn = LlamaAttention(config, rotary_emb, layer_idx, f"{prefix}.self_attn",
                                            qkv_bias=bias, o_bias=bias)
        self.feed_forward = LlamaMLP(config.hidden_size, config.intermediate_size,
                                     config.hidden_act, config.mlp_bias, f"{prefix}.feed_forward")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.input_layernorm(hidden_states, residual)
        if self.is_mamba:
            hidden_states = self.mamba(hidden_states)
        else:
            hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.pre_ff_layernorm(hidden_states, residual)
        return self.feed_forward(hidden_states), residual


class BambaModel(nn.Module):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        rotary_emb = RotaryEmbedding(head_dim_of(config), max_position, rope_parameters(config))
        self.layers = nn.ModuleList(
            BambaDecoderLayer(config, rotary_emb, i, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.final_layernorm(hidden_states, residual)
        return hidden_states


class BambaForCausalLM(nn.Module):
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
        self.model = BambaModel(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        tied = self.tie_word_embeddings
        return load_packed_weights(self, weights, self.packed_modules_mapping,
                                   lambda name: tied and name.startswith("lm_head."))
