"""Phi-1 / Phi-1.5 / Phi-2: one LayerNorm feeding attention and MLP in parallel,
x + attn(ln(x)) + mlp(ln(x)); q/k/v and the output `dense` with bias, rotary on the first
`partial_rotary_factor` of each head, optional LayerNorm of each q/k head (`qk_layernorm`, one
weight shared by the heads), a plain MLP (fc1 -> gelu_new -> fc2) and an LM head with bias.

Its block is not one the fused CPU stack computes, so Phi runs eagerly (the worker logs why).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import LayerNorm
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import LayerRunner, head_dim_of
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm


class PhiAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        self.head_dim = head_dim = head_dim_of(config)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, head_dim, num_heads, num_kv_heads, True, prefix=f"{prefix}.qkv_proj"
        )
        self.dense = RowParallelLinear(
            num_heads * head_dim, config.hidden_size, True, prefix=f"{prefix}.dense"
        )
        self.split_sizes = list(self.qkv_proj.output_sizes_per_partition)  # (this rank's q|k|v)
        self.q_layernorm = self.k_layernorm = None
        if config.qk_layernorm:
            self.q_layernorm = LayerNorm(head_dim, config.layer_norm_eps)
            self.k_layernorm = LayerNorm(head_dim, config.layer_norm_eps)
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            num_heads, head_dim, head_dim**-0.5, num_kv_heads, prefix=f"{prefix}.attn"
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        if self.q_layernorm is not None and self.k_layernorm is not None:
            q, k = self._norm_heads(self.q_layernorm, q), self._norm_heads(self.k_layernorm, k)
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.dense(self.attn(q, k, v))

    def _norm_heads(self, norm: LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return norm.norm(x.reshape(x.shape[0], -1, self.head_dim)).reshape(x.shape)


class PhiMLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.fc1 = ColumnParallelLinear(hidden, inner, True, prefix=f"{prefix}.fc1")
        self.act = get_act_fn(config.hidden_act)
        self.fc2 = RowParallelLinear(inner, hidden, True, prefix=f"{prefix}.fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.fc2(self.act(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.self_attn = PhiAttention(config, rotary_emb, f"{prefix}.self_attn")
        self.mlp = PhiMLP(config, f"{prefix}.mlp")

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = self.input_layernorm(hidden_states, residual)
        return self.self_attn(positions, normed) + self.mlp(normed), residual


class PhiModel(PipelineStageStack):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
        )
        rotary_emb = RotaryEmbedding(head_dim_of(config), max_position, rope_parameters(config))
        self.layers = self.build_stage_layers(
            config.num_hidden_layers, config.hidden_size,
            lambda i: PhiDecoderLayer(config, rotary_emb, f"{prefix}.layers.{i}"),
        )  # fmt: skip
        self.final_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.layer_runner: LayerRunner | None = None  # (the worker's slot, see LlamaModel)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.embed_tokens(input_ids)  # [T, hidden]
        )
        if self.layer_runner is not None:  # (runs this stage's layers)
            hidden_states, residual = self.layer_runner(positions, hidden_states, residual)
        else:
            for layer in self.stage_layers(self.layers):
                hidden_states, residual = layer(positions, hidden_states, residual)
        return self.stage_output(hidden_states, residual, add_and_norm(self.final_layernorm))


class PhiForCausalLM(nn.Module):
    supports_tensor_parallel = True  # (q/k LayerNorms are per head with one shared weight)
    supports_pipeline_parallel = True  # (PhiModel: PipelineStageStack)
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        if getattr(config, "tie_word_embeddings", False):
            raise NotImplementedError("Phi with tied word embeddings (its LM head has a bias)")
        self.config = config
        self.tie_word_embeddings = False
        self.model = PhiModel(config, model_config.max_model_len)
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, bias=True, prefix="lm_head"
        )
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)  # [T] -> [T, hidden]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(
            self, weights, self.packed_modules_mapping,
            lambda name: "rotary_emb.inv_freq" in name,
        )  # fmt: skip
