"""GPT-NeoX / Pythia: LayerNorm blocks whose attention and MLP may read the same input in
parallel (`use_parallel_residual`), rotary on the first `rotary_pct` of each head's dims, one
fused query_key_value projection and an untied output embedding (embed_out).

The checkpoint's query_key_value rows are interleaved per head ([heads, 3, head_dim]); they are
reordered at load into our q | k | v layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = head_dim = hidden // num_heads
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = QKVParallelLinear(
            hidden, head_dim, num_heads, num_heads, bias, prefix=f"{prefix}.query_key_value"
        )
        self.dense = RowParallelLinear(hidden, hidden, bias, prefix=f"{prefix}.dense")
        self.rotary_emb = rotary_emb
        scale = head_dim**-0.5
        self.attn = Attention(num_heads, head_dim, scale, num_heads, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden_states).chunk(3, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.dense(self.attn(q, k, v))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.dense_h_to_4h = ColumnParallelLinear(
            hidden, inner, True, prefix=f"{prefix}.dense_h_to_4h"
        )
        self.act = get_act_fn(config.hidden_act)
        self.dense_4h_to_h = RowParallelLinear(
            inner, hidden, True, prefix=f"{prefix}.dense_4h_to_h"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    """Parallel: x + attn(ln1(x)) + mlp(ln2(x)). Sequential: x + attn(ln1(x)), then
    + mlp(ln2(.)). The residual stream is carried unsummed as (hidden_states, residual)."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, rotary_emb, f"{prefix}.attention")
        self.mlp = GPTNeoXMLP(config, f"{prefix}.mlp")

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = self.input_layernorm(hidden_states, residual)
        attn_output = self.attention(positions, normed)
        if self.use_parallel_residual:
            mlp_output = self.mlp(self.post_attention_layernorm.norm(residual))
            return attn_output + mlp_output, residual
        normed, residual = self.post_attention_layernorm(attn_output, residual)
        return self.mlp(normed), residual


class GPTNeoXModel(PipelineStageStack):
    def __init__(self, config: Any, max_position: int, prefix: str = "gpt_neox") -> None:
        super().__init__()
        self.embed_in = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_in"
        )
        head_dim = config.hidden_size // config.num_attention_heads
        rotary_emb = RotaryEmbedding(head_dim, max_position, rope_parameters(config))
        self.layers = self.build_stage_layers(
            config.num_hidden_layers, config.hidden_size,
            lambda i: GPTNeoXLayer(config, rotary_emb, f"{prefix}.layers.{i}"),
        )  # fmt: skip
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.embed_in(input_ids)  # [T, hidden]
        )
        for layer in self.stage_layers(self.layers):
            hidden_states, residual = layer(positions, hidden_states, residual)
        return self.stage_output(hidden_states, residual, add_and_norm(self.final_layer_norm))


class GPTNeoXForCausalLM(nn.Module):
    supports_tensor_parallel = True
    supports_pipeline_parallel = True  # (GPTNeoXModel: PipelineStageStack)

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.gpt_neox = GPTNeoXModel(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.embed_out = self.gpt_neox.embed_in
        else:
            self.embed_out = ParallelLMHead(
                config.vocab_size, config.hidden_size, prefix="embed_out"
            )
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox(input_ids, positions)  # [T] -> [T, hidden]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.embed_out, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        weights = self.gpt_neox.own_layer_weights(weights)
        return load_packed_weights(self, self._hf_to_ours(weights), {}, self._skip)

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        num_heads = self.config.num_attention_heads
        for name, tensor in weights:
            if ".query_key_value." in name:
                tensor = _per_head_to_qkv(tensor, num_heads)
            yield name, tensor

    def _skip(self, name: str) -> bool:
        # Old checkpoints store the rotary inv_freq and the causal mask buffers.
        return name.endswith(
            ("rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")
        ) or (self.tie_word_embeddings and name.startswith("embed_out."))


def _per_head_to_qkv(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows [heads, 3, head_dim] -> [3, heads, head_dim] (of a weight [3*hidden, in] or a bias
    [3*hidden])."""
    rest = tensor.shape[1:]
    per_head = tensor.reshape(num_heads, 3, -1, *rest)
    return per_head.transpose(0, 1).reshape(-1, *rest)
