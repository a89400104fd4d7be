"""Falcon, both decoder layouts, with rotary or ALiBi positions:

- the new architecture (Falcon-40B/180B, Falcon 2): grouped-query attention whose fused
  query_key_value rows are per KV group [kv_heads, queries per group + 2, head_dim] (the group's
  queries, then its key and value), and a parallel block with two norms (ln_attn, ln_mlp) or
  one (`num_ln_in_parallel_attn` 1);
- the old one (Falcon-7B, RW): multi-query (rows q | k | v with one K/V head) or multi-head
  (rows per head [heads, 3, head_dim]), the block parallel with one norm (`parallel_attn`) or
  sequential with two.

The fused rows are reordered at load into our q | k | v layout. ALiBi variants (`alibi`:
Falcon-RW) attend through layers/alibi_attention.py instead of rotary. Runs eagerly (no
`model.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.alibi_attention import ALiBiAttention
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
from pagedllm.model_executor.layers.weight_utils import load_packed_weights, take_rows
from pagedllm.model_executor.models.gpt_neox import _per_head_to_qkv
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm


def _num_kv_heads(config: Any) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _num_block_norms(config: Any) -> int:
    """How many LayerNorms read the block input: 2 (ln_attn, ln_mlp) or 1 (input_layernorm)."""
    if config.new_decoder_architecture:
        return config.num_ln_in_parallel_attn or 2
    return 1


class FalconALiBiAttention(ALiBiAttention):
    """Falcon-RW's ALiBi as transformers computes it: the bias is bf16(bf16(slope_h) * k) /
    sqrt(head_dim) over absolute key positions (rounded to bfloat16 whatever the model dtype),
    so it is reproduced exactly rather than as the float32 slope_h * (k - q)."""

    def position_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        slopes = self.alibi_slopes.to(q_pos.device).bfloat16()[:, None, None]
        bias = (slopes * k_pos).float() / math.sqrt(self.head_size)  # [H, 1, seq_len]
        return bias.expand(-1, q_pos.shape[0], -1)


class FalconAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.num_attention_heads
        num_kv_heads = _num_kv_heads(config)
        head_dim = hidden // num_heads
        self.query_key_value = QKVParallelLinear(
            hidden, head_dim, num_heads, num_kv_heads, config.bias,
            prefix=f"{prefix}.query_key_value",
        )  # fmt: skip
        self.dense = RowParallelLinear(hidden, hidden, config.bias, prefix=f"{prefix}.dense")
        # this rank's q | k | v columns (a single multi-query K/V head replicated over ranks)
        self.split_sizes = list(self.query_key_value.output_sizes_per_partition)
        self.alibi = bool(config.alibi)
        self.rotary_emb = rotary_emb
        attn_cls = FalconALiBiAttention if self.alibi else Attention
        self.attn = attn_cls(num_heads, head_dim, head_dim**-0.5, num_kv_heads,
                             prefix=f"{prefix}.attn")  # fmt: skip

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden_states).split(self.split_sizes, dim=-1)
        if not self.alibi:
            q, k = self.rotary_emb(positions, q, k)
        return self.dense(self.attn(q, k, v))


class FalconMLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.ffn_hidden_size or 4 * hidden
        self.dense_h_to_4h = ColumnParallelLinear(
            hidden, inner, config.bias, prefix=f"{prefix}.dense_h_to_4h"
        )
        self.act = get_act_fn(config.activation)
        self.dense_4h_to_h = RowParallelLinear(
            inner, hidden, config.bias, prefix=f"{prefix}.dense_4h_to_h"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    """Parallel: x + attn(ln_attn(x)) + mlp(ln_mlp(x)) (one norm: both read input_layernorm's
    output). Sequential (old layout without parallel_attn): x + attn(input_layernorm(x)), then
    + mlp(post_attention_layernorm(.))."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        self.parallel = config.new_decoder_architecture or config.parallel_attn
        self.two_norms = _num_block_norms(config) == 2
        if self.two_norms:
            self.ln_attn = LayerNorm(hidden, eps)
            self.ln_mlp = LayerNorm(hidden, eps)
        else:
            self.input_layernorm = LayerNorm(hidden, eps)
            if not self.parallel:
                self.post_attention_layernorm = LayerNorm(hidden, eps)
        self.self_attention = FalconAttention(config, rotary_emb, f"{prefix}.self_attention")
        self.mlp = FalconMLP(config, f"{prefix}.mlp")

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.two_norms:
            attn_in, residual = self.ln_attn(hidden_states, residual)
            mlp_in = self.ln_mlp.norm(residual)
        else:
            attn_in, residual = self.input_layernorm(hidden_states, residual)
            mlp_in = attn_in
        attn_out = self.self_attention(positions, attn_in)
        if self.parallel:
            return attn_out + self.mlp(mlp_in), residual
        mlp_in, residual = self.post_attention_layernorm(attn_out, residual)
        return self.mlp(mlp_in), residual


class FalconModel(PipelineStageStack):
    def __init__(self, config: Any, max_position: int, prefix: str = "transformer") -> None:
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.word_embeddings"
        )
        head_dim = config.hidden_size // config.num_attention_heads
        rotary_emb = RotaryEmbedding(head_dim, max_position, rope_parameters(config))
        self.h = self.build_stage_layers(
            config.num_hidden_layers, config.hidden_size,
            lambda i: FalconDecoderLayer(config, rotary_emb, f"{prefix}.h.{i}"),
        )  # fmt: skip
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.word_embeddings(input_ids)  # [T, hidden]
        )
        for layer in self.stage_layers(self.h):
            hidden_states, residual = layer(positions, hidden_states, residual)
        return self.stage_output(hidden_states, residual, add_and_norm(self.ln_f))


class FalconForCausalLM(nn.Module):
    supports_tensor_parallel = True  # (query_key_value reordered to q|k|v at load, then split)
    supports_pipeline_parallel = True  # (FalconModel: PipelineStageStack)
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        one_norm = _num_block_norms(config) == 1
        if config.new_decoder_architecture and one_norm and not config.parallel_attn:
            raise NotImplementedError("Falcon's new layout with one block norm needs parallel_attn")
        self.config = config
        self.transformer = FalconModel(config, model_config.max_model_len)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head = self.transformer.word_embeddings
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)  # [T] -> [T, hidden]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        weights = self.transformer.own_layer_weights(weights)
        return load_packed_weights(self, self._hf_to_ours(weights), {}, self._skip)

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        config = self.config
        for name, tensor in weights:
            if ".query_key_value." in name:
                # (reordered by row index: a GGUF weight in its blocks moves whole rows)
                rows = torch.arange(tensor.shape[0])
                if config.new_decoder_architecture:
                    head_dim = config.hidden_size // config.num_attention_heads
                    tensor = take_rows(tensor, grouped_to_qkv(rows, config.num_kv_heads, head_dim))
                elif not config.multi_query:
                    tensor = take_rows(tensor, _per_head_to_qkv(rows, config.num_attention_heads))
                # (multi-query rows are q | k | v already)
            yield name, tensor

    def _skip(self, name: str) -> bool:
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("lm_head.")
        )


def grouped_to_qkv(tensor: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Rows [kv_heads, queries per group + 2, head_dim] (each group's queries, then its key and
    value) -> q | k | v (of a weight [rows, in] or a bias [rows])."""
    rest = tensor.shape[1:]
    grouped = tensor.reshape(num_kv_heads, -1, head_dim, *rest)  # [Hkv, G + 2, D, ...]
    q, k, v = grouped[:, :-2], grouped[:, -2], grouped[:, -1]
    return torch.cat([q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)])
