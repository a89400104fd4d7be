"""OPT: learned absolute positions stored with an offset of 2, LayerNorm blocks applied before
each sub-block (`do_layer_norm_before`, most sizes) or after its residual add (OPT-350m), a ReLU
fc1/fc2 MLP, and the LM head tied to the token embedding. When word_embed_proj_dim differs from
hidden_size (OPT-350m), project_in / project_out map between the two.
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
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack

POSITION_OFFSET = 2
"""OPT's position embedding row of position p is p + 2 (a fairseq padding_idx leftover)."""


class OPTAttention(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // num_heads
        bias = config.enable_bias
        self.qkv_proj = QKVParallelLinear(
            hidden, head_dim, num_heads, num_heads, bias, prefix=f"{prefix}.qkv_proj"
        )
        self.out_proj = RowParallelLinear(hidden, hidden, bias, prefix=f"{prefix}.out_proj")
        scale = head_dim**-0.5
        self.attn = Attention(num_heads, head_dim, scale, num_heads, prefix=f"{prefix}.attn")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        q, k, v = self.qkv_proj(hidden_states).chunk(3, dim=-1)
        return self.out_proj(self.attn(q, k, v))


class OPTDecoderLayer(nn.Module):
    """Pre-norm: x + attn(ln(x)), then + fc2(relu(fc1(ln(.)))). Post-norm: ln(x + attn(x)),
    then ln(. + fc2(relu(fc1(.))))."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, config.enable_bias
        self.do_layer_norm_before = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, f"{prefix}.self_attn")
        self.self_attn_layer_norm = LayerNorm(hidden)
        self.fc1 = ColumnParallelLinear(hidden, config.ffn_dim, bias, prefix=f"{prefix}.fc1")
        self.activation_fn = get_act_fn(config.activation_function)
        self.fc2 = RowParallelLinear(config.ffn_dim, hidden, bias, prefix=f"{prefix}.fc2")
        self.final_layer_norm = LayerNorm(hidden)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer (pre-norm)
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (hidden_states, residual) whose sum is the stream; post-norm keeps it all in
        hidden_states (residual None)."""
        if not self.do_layer_norm_before:
            return self._post_norm(hidden_states), None
        hidden_states, residual = self.self_attn_layer_norm(hidden_states, residual)
        hidden_states = self.self_attn(hidden_states)
        hidden_states, residual = self.final_layer_norm(hidden_states, residual)
        return self.mlp(hidden_states), residual

    def _post_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attn_output = self.self_attn(hidden_states)
        hidden_states, _ = self.self_attn_layer_norm(attn_output, hidden_states)
        hidden_states, _ = self.final_layer_norm(self.mlp(hidden_states), hidden_states)
        return hidden_states

    def mlp(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.fc2(self.activation_fn(self.fc1(x)))


class OPTDecoder(PipelineStageStack):
    def __init__(self, config: Any, prefix: str = "model.decoder") -> None:
        super().__init__()
        if not config.layer_norm_elementwise_affine:
            raise ValueError("OPT with layer_norm_elementwise_affine=False is not supported")
        hidden, proj_dim = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, proj_dim, prefix=f"{prefix}.embed_tokens"
        )
        num_positions = config.max_position_embeddings + POSITION_OFFSET
        self.embed_positions = VocabParallelEmbedding(
            num_positions, hidden, prefix=f"{prefix}.embed_positions"
        )
        self.project_in = self.project_out = None
        if proj_dim != hidden:
            self.project_in = ReplicatedLinear(proj_dim, hidden, prefix=f"{prefix}.project_in")
            self.project_out = ReplicatedLinear(hidden, proj_dim, prefix=f"{prefix}.project_out")
        # (post-norm layers return the whole stream in hidden_states: nothing else to send)
        self.carries_residual = bool(config.do_layer_norm_before)
        self.layers = self.build_stage_layers(
            config.num_hidden_layers, hidden,
            lambda i: OPTDecoderLayer(config, f"{prefix}.layers.{i}"),
        )  # fmt: skip
        has_final_norm = config.do_layer_norm_before and not config._remove_final_layer_norm
        self.final_layer_norm = LayerNorm(hidden) if has_final_norm else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.embed(input_ids, positions)
        )
        for layer in self.stage_layers(self.layers):
            hidden_states, residual = layer(hidden_states, residual)
        return self.stage_output(hidden_states, residual, self.final)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        inputs_embeds = self.embed_tokens(input_ids)  # [T, proj_dim]
        if self.project_in is not None:
            inputs_embeds = self.project_in(inputs_embeds)
        return inputs_embeds + self.embed_positions(positions + POSITION_OFFSET)  # [T, hidden]

    def final(self, hidden_states: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """[T, hidden] (+ residual) -> [T, proj_dim]: the last stage's output."""
        if residual is not None:
            hidden_states = hidden_states + residual
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm.norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return hidden_states  # [T, proj_dim]


class OPTModel(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids, positions)


class OPTForCausalLM(nn.Module):
    supports_tensor_parallel = True  # (project_in/out replicated: small, outside the heads)
    supports_pipeline_parallel = True  # (OPTDecoder: PipelineStageStack)
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model = OPTModel(config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head = self.model.decoder.embed_tokens
        else:
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.word_embed_proj_dim, prefix="lm_head"
            )
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)  # [T] -> [T, proj_dim]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, proj_dim] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(
            self, _with_model_prefix(weights), self.packed_modules_mapping, self._skip
        )

    def _skip(self, name: str) -> bool:
        return self.tie_word_embeddings and name.startswith("lm_head.")


def _with_model_prefix(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    # The original facebook/opt-* checkpoints name the body "decoder.*", without "model.".
    for name, tensor in weights:
        yield (f"model.{name}" if name.startswith("decoder.") else name), tensor
