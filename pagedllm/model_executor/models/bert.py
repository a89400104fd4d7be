"""BERT encoders (BertModel; sentence-transformers' all-MiniLM-L6-v2) for embeddings.

Post-norm blocks with bidirectional attention within each prompt of the packed batch and no KV
cache: every forward sees whole prompts (the pooling core never chunks them).

    embeddings: LayerNorm(word[id] + position[pos] + token_type[0])
    layer:      x = LayerNorm(x + dense(attn(qkv(x))));  x = LayerNorm(x + out(gelu(inter(x))))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.embedding import VocabParallelEmbedding
from pagedllm.model_executor.layers.encoder_attention import EncoderAttention
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.pooler import Pooler
from pagedllm.model_executor.layers.weight_utils import load_packed_weights


class BertEmbeddings(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size, hidden, prefix=f"{prefix}.word_embeddings"
        )
        self.position_embeddings = VocabParallelEmbedding(
            config.max_position_embeddings, hidden, prefix=f"{prefix}.position_embeddings"
        )
        self.token_type_embeddings = VocabParallelEmbedding(
            config.type_vocab_size, hidden, prefix=f"{prefix}.token_type_embeddings"
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # NOTE: single-segment inputs: every token has token type 0.
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(embeddings + self.token_type_embeddings.weight[0])  # [T, hidden]


class BertSelfAttention(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        head_size = config.hidden_size // num_heads
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, head_size, num_heads, num_heads, True, prefix=f"{prefix}.qkv_proj"
        )
        self.attn = EncoderAttention(num_heads, head_size, head_size**-0.5)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        q, k, v = self.qkv_proj(hidden_states).chunk(3, dim=-1)
        return self.attn(q, k, v)


class BertAddNorm(nn.Module):
    """LayerNorm(residual + dense(x)): HF's BertSelfOutput and BertOutput."""

    def __init__(self, input_size: int, hidden_size: int, eps: float, prefix: str) -> None:
        super().__init__()
        self.dense = RowParallelLinear(input_size, hidden_size, True, prefix=f"{prefix}.dense")
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class BertAttention(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, f"{prefix}.self")
        self.output = BertAddNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps,
                                  f"{prefix}.output")  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        self.dense = ColumnParallelLinear(
            config.hidden_size, config.intermediate_size, True, prefix=f"{prefix}.dense"
        )
        self.act_fn = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, intermediate]
        return self.act_fn(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        self.attention = BertAttention(config, f"{prefix}.attention")
        self.intermediate = BertIntermediate(config, f"{prefix}.intermediate")
        self.output = BertAddNorm(config.intermediate_size, config.hidden_size,
                                  config.layer_norm_eps, f"{prefix}.output")  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attention_output = self.attention(hidden_states)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, config: Any, prefix: str = "encoder") -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(config, f"{prefix}.layer.{i}") for i in range(config.num_hidden_layers)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class BertModel(nn.Module):
    packed_modules_mapping = {"qkv_proj": ["query", "key", "value"]}
    """Our fused module -> the checkpoint modules stacked into it, in row order."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        assert model_config.pooler is not None, "BertModel serves embeddings only"
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BERT position_embedding_type {config.position_embedding_type!r} is not "
                f"supported (only 'absolute')"
            )
        self.config = config
        self.embeddings = BertEmbeddings(config, "embeddings")
        self.encoder = BertEncoder(config)
        self.pooler = Pooler(model_config.pooler.pooling_type)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] long, whole prompts packed back to back
        positions: torch.Tensor,  # [T] long, from 0 in each prompt
    ) -> torch.Tensor:  # [T, hidden]
        return self.encoder(self.embeddings(input_ids, positions))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(self, _strip_prefix(weights), self.packed_modules_mapping, _skip)


def _strip_prefix(weights: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    # BertForMaskedLM-style checkpoints name the encoder "bert.*".
    for name, tensor in weights:
        yield name.removeprefix("bert."), tensor


def _skip(name: str) -> bool:
    # The position-id buffer, HF's [CLS] pooler (sentence-transformers does not use it) and any
    # pre-training heads.
    return name.endswith("position_ids") or name.startswith(("pooler.", "cls."))
