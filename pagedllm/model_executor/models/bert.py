"""BERT and RoBERTa encoders: embeddings (BertModel, sentence-transformers' all-MiniLM-L6-v2;
RobertaModel/XLMRobertaModel) and sequence classifiers / cross-encoders
(BertForSequenceClassification, (XLM)RobertaForSequenceClassification).

Post-norm blocks with bidirectional attention within each prompt of the packed batch and no KV
cache: every forward sees whole prompts (the pooling core never chunks them).

    embeddings: LayerNorm(word[id] + position[pos] + token_type[segment])
    layer:      x = LayerNorm(x + dense(attn(qkv(x))));  x = LayerNorm(x + out(gelu(inter(x))))
    classifier: classifier(tanh(dense(x[CLS])))   (BERT's pooler + classifier; RoBERTa's head)

RoBERTa differs only in its positions, counted from padding_idx + 1 over the non-pad tokens.
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
    ReplicatedLinear,
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

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:  # one segment: every token has token type 0
            return self.LayerNorm(embeddings + self.token_type_embeddings.weight[0])
        return self.LayerNorm(embeddings + self.token_type_embeddings(token_type_ids))


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
    checkpoint_prefix = "bert."
    """What task-head checkpoints (BertForMaskedLM, ...ForSequenceClassification) call the
    encoder; stripped at load."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BERT position_embedding_type {config.position_embedding_type!r} is not "
                f"supported (only 'absolute')"
            )
        self.config = config
        self.embeddings = BertEmbeddings(config, "embeddings")
        self.encoder = BertEncoder(config)
        self.pooler = self._make_pooler(model_config)

    def _make_pooler(self, model_config: ModelConfig) -> nn.Module:
        assert model_config.pooler is not None, f"{type(self).__name__} serves embeddings only"
        return Pooler(model_config.pooler.pooling_type)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] long, whole prompts packed back to back
        positions: torch.Tensor,  # [T] long, from 0 in each prompt
        token_type_ids: torch.Tensor | None = None,  # [T] long; None: all segment 0
    ) -> torch.Tensor:  # [T, hidden]
        positions = self.embedding_positions(input_ids, positions)
        return self.encoder(self.embeddings(input_ids, positions, token_type_ids))

    def embedding_positions(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(self, self._checkpoint_names(weights),
                                   self.packed_modules_mapping, self.skips_weight)

    def skips_weight(self, name: str) -> bool:
        # The position-id buffers, HF's [CLS] pooler (sentence-transformers does not use it)
        # and any pre-training heads.
        return (name.endswith(("position_ids", "token_type_ids"))
                or name.startswith(("pooler.", "cls.", "lm_head.")))

    def _checkpoint_names(self, weights: Iterable[tuple[str, Any]]
                          ) -> Iterable[tuple[str, Any]]:
        for name, tensor in weights:
            yield name.removeprefix(self.checkpoint_prefix), tensor


class RobertaModel(BertModel):
    """RoBERTa / XLM-RoBERTa: BERT's blocks; positions count the non-pad tokens of each prompt
    from padding_idx + 1 (transformers' create_position_ids_from_input_ids)."""

    checkpoint_prefix = "roberta."

    def embedding_positions(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pad = self.config.pad_token_id
        not_pad = (input_ids != pad).long()
        counted = torch.cumsum(not_pad, 0)  # over the packed batch
        # Subtract what the prompts before each token's own prompt counted.
        starts = positions == 0
        before = (counted - not_pad)[starts]  # [B]: the count just before each prompt
        prompt_of_token = torch.cumsum(starts.long(), 0) - 1
        return (counted - before[prompt_of_token]) * not_pad + pad


class ClassifierPooler(nn.Module):
    """The [CLS] (first) token's state -> one logit per label: classifier(tanh(dense(x)))."""

    def __init__(self, hidden_size: int, num_labels: int, prefix: str) -> None:
        super().__init__()
        self.dense = ReplicatedLinear(hidden_size, hidden_size, True, prefix=f"{prefix}.dense")
        self.classifier = ReplicatedLinear(hidden_size, num_labels, True,
                                           prefix=f"{prefix}.classifier")

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, hidden], prompts packed back to back
        query_start_loc: torch.Tensor,  # [B + 1] long
    ) -> torch.Tensor:  # [B, num_labels] float32
        cls = hidden_states[query_start_loc[:-1]]
        return self.classifier(torch.tanh(self.dense(cls))).float()


class BertForSequenceClassification(BertModel):
    """BERT with its [CLS] pooler (dense + tanh) and classifier: the logits per prompt are the
    pooled output. Cross-encoders (ms-marco MiniLM, bge-reranker) are this with one label."""

    # transformers' names of the head -> ours (both heads are dense, tanh, projection).
    head_names = {"bert.pooler.dense.": "pooler.dense.", "classifier.": "pooler.classifier."}

    def _make_pooler(self, model_config: ModelConfig) -> nn.Module:
        assert model_config.classifier is not None, "a classifier needs task 'classify'"
        return ClassifierPooler(self.config.hidden_size, model_config.classifier.num_labels,
                                "pooler")

    def skips_weight(self, name: str) -> bool:
        # The head was renamed to ours ("pooler.dense", "pooler.classifier") and loads.
        return (name.endswith(("position_ids", "token_type_ids"))
                or name.startswith(("cls.", "lm_head.")))

    def _checkpoint_names(self, weights: Iterable[tuple[str, Any]]
                          ) -> Iterable[tuple[str, Any]]:
        for name, tensor in weights:
            for theirs, ours in self.head_names.items():
                if name.startswith(theirs):
                    name = ours + name.removeprefix(theirs)
                    break
            yield name.removeprefix(self.checkpoint_prefix), tensor


class RobertaForSequenceClassification(RobertaModel, BertForSequenceClassification):
    checkpoint_prefix = "roberta."
    head_names = {"classifier.dense.": "pooler.dense.",
                  "classifier.out_proj.": "pooler.classifier."}

