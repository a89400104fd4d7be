"""BLOOM: GPT-NeoX's sequential LayerNorm block with ALiBi in place of rotary
(layers/alibi_attention.py), a LayerNorm right after the word embedding, a tanh-GELU MLP, biases
everywhere and the LM head tied to the embedding (unless tie_word_embeddings is false).
`apply_residual_connection_post_layernorm` makes each sub-block's residual the normed input
instead of the input.

The checkpoint's query_key_value rows are interleaved per head ([heads, 3, head_dim], as
GPT-NeoX's); they are reordered at load into our q | k | v layout. Checkpoints saved from
BloomModel name their tensors without the `transformer.` prefix; both load.

Runs eagerly: the fused CPU stack computes neither the block nor ALiBi.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.alibi_attention import ALiBiAttention
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.layernorm import LayerNorm
from pagedllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import load_packed_weights, take_rows
from pagedllm.model_executor.models.gpt_neox import _per_head_to_qkv
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack


class BloomAttention(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.n_head
        head_dim = hidden // num_heads
        self.query_key_value = QKVParallelLinear(
            hidden, head_dim, num_heads, num_heads, True, prefix=f"{prefix}.query_key_value"
        )
        self.dense = RowParallelLinear(hidden, hidden, True, prefix=f"{prefix}.dense")
        self.attn = ALiBiAttention(num_heads, head_dim, head_dim**-0.5, num_heads,
                                   prefix=f"{prefix}.attn")  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        q, k, v = self.query_key_value(hidden_states).chunk(3, dim=-1)
        return self.dense(self.attn(q, k, v))


class BloomMLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(hidden, 4 * hidden, True,
                                                  prefix=f"{prefix}.dense_h_to_4h")  # fmt: skip
        # BLOOM's gelu is the tanh approximation (0.79788456 for sqrt(2 / pi))
        self.act = get_act_fn("gelu_new")
        self.dense_4h_to_h = RowParallelLinear(4 * hidden, hidden, True,
                                               prefix=f"{prefix}.dense_4h_to_h")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class BloomBlock(nn.Module):
    """x + attn(ln1(x)), then + mlp(ln2(.)); with apply_residual_connection_post_layernorm the
    added residual is ln1(x) (ln2(.)) instead of x (.)."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.post_ln_residual = bool(config.apply_residual_connection_post_layernorm)
        self.input_layernorm = LayerNorm(config.hidden_size, eps)
        self.self_attention = BloomAttention(config, f"{prefix}.self_attention")
        self.post_attention_layernorm = LayerNorm(config.hidden_size, eps)
        self.mlp = BloomMLP(config, f"{prefix}.mlp")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        normed = self.input_layernorm.norm(hidden_states)
        residual = normed if self.post_ln_residual else hidden_states
        hidden_states = self.self_attention(normed) + residual
        normed = self.post_attention_layernorm.norm(hidden_states)
        residual = normed if self.post_ln_residual else hidden_states
        return self.mlp(normed) + residual


class BloomModel(PipelineStageStack):
    carries_residual = False  # (each block returns the summed stream)

    def __init__(self, config: Any, prefix: str = "transformer") -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.word_embeddings"
        )
        self.word_embeddings_layernorm = LayerNorm(config.hidden_size, eps)
        self.h = self.build_stage_layers(
            config.num_hidden_layers, config.hidden_size,
            lambda i: BloomBlock(config, f"{prefix}.h.{i}"),
        )  # fmt: skip
        self.ln_f = LayerNorm(config.hidden_size, eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        hidden_states, _ = self.stage_input(
            input_ids.shape[0],
            lambda: self.word_embeddings_layernorm.norm(self.word_embeddings(input_ids)),
        )
        for block in self.stage_layers(self.h):
            hidden_states = block(hidden_states)
        return self.stage_output(hidden_states, None, lambda h, _: self.ln_f.norm(h))


class BloomForCausalLM(nn.Module):
    supports_tensor_parallel = True
    """query_key_value (per head in the checkpoint) is reordered at load, then split by heads;
    each rank's ALiBi slopes are its heads'."""
    supports_pipeline_parallel = True  # (BloomModel: PipelineStageStack)

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.transformer = BloomModel(config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:  # (every released BLOOM)
            self.lm_head = self.transformer.word_embeddings
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # (positions unused: ALiBi reads them from the attention metadata's sequence lengths)
        return self.transformer(input_ids)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        weights = self.transformer.own_layer_weights(weights)
        return load_packed_weights(self, self._hf_to_ours(weights), {}, self._skip)

    def _skip(self, name: str) -> bool:
        return self.tie_word_embeddings and name.startswith("lm_head.")

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        num_heads = self.config.n_head
        for name, tensor in weights:
            if not name.startswith(("transformer.", "lm_head.")):
                name = f"transformer.{name}"
            if ".query_key_value." in name:  # (by row index: GGUF blocks move whole rows)
                tensor = take_rows(tensor, _per_head_to_qkv(torch.arange(tensor.shape[0]),
                                                            num_heads))
            yield name, tensor
