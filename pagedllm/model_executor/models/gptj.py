"""GPT-J: one LayerNorm feeding attention and MLP in parallel, x + attn(ln_1(x)) + mlp(ln_1(x));
q/k/v and out_proj without bias, rotary on the first `rotary_dim` dims of each head with
adjacent dims paired (GPT-J style), a plain MLP (fc_in -> gelu_new -> fc_out) with bias and an
LM head with bias.

The interleaved rotary becomes our rotate-half one by reordering the q/k checkpoint rows at
load (layers/rotary.py interleaved_to_neox_rows). Runs eagerly (no `model.layers` stack).
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
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, interleaved_to_neox_rows
from pagedllm.model_executor.layers.weight_utils import load_packed_weights, take_rows
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm


def _rotary_dim(config: Any) -> int:
    return config.rotary_dim or config.n_embd // config.n_head


class GPTJAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.n_embd, config.n_head
        head_dim = hidden // num_heads
        self.qkv_proj = QKVParallelLinear(
            hidden, head_dim, num_heads, num_heads, False, prefix=f"{prefix}.qkv_proj"
        )
        self.out_proj = RowParallelLinear(hidden, hidden, False, prefix=f"{prefix}.out_proj")
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_heads,
                              prefix=f"{prefix}.attn")  # fmt: skip

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).chunk(3, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.out_proj(self.attn(q, k, v))


class GPTJMLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.n_embd
        inner = config.n_inner or 4 * hidden
        self.fc_in = ColumnParallelLinear(hidden, inner, True, prefix=f"{prefix}.fc_in")
        self.act = get_act_fn(config.activation_function)
        self.fc_out = RowParallelLinear(inner, hidden, True, prefix=f"{prefix}.fc_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.fc_out(self.act(self.fc_in(x)))


class GPTJBlock(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, prefix: str) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = GPTJAttention(config, rotary_emb, f"{prefix}.attn")
        self.mlp = GPTJMLP(config, f"{prefix}.mlp")

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = self.ln_1(hidden_states, residual)
        return self.attn(positions, normed) + self.mlp(normed), residual


class GPTJModel(PipelineStageStack):
    def __init__(self, config: Any, max_position: int, prefix: str = "transformer") -> None:
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.n_embd, prefix=f"{prefix}.wte")
        head_dim = config.n_embd // config.n_head
        params = {"rope_type": "default", "rope_theta": 10000.0,
                  "partial_rotary_factor": _rotary_dim(config) / head_dim}  # fmt: skip
        rotary_emb = RotaryEmbedding(head_dim, max_position, params)
        self.h = self.build_stage_layers(
            config.n_layer, config.n_embd,
            lambda i: GPTJBlock(config, rotary_emb, f"{prefix}.h.{i}"),
        )  # fmt: skip
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.wte(input_ids)  # [T, hidden]
        )
        for layer in self.stage_layers(self.h):
            hidden_states, residual = layer(positions, hidden_states, residual)
        return self.stage_output(hidden_states, residual, add_and_norm(self.ln_f))


class GPTJForCausalLM(nn.Module):
    supports_tensor_parallel = True  # (parallel attention and MLP: each row-parallel, summed)
    supports_pipeline_parallel = True  # (GPTJModel: PipelineStageStack)
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        if getattr(config, "tie_word_embeddings", False):
            raise NotImplementedError("GPT-J with tied word embeddings (its LM head has a bias)")
        self.config = config
        self.tie_word_embeddings = False
        self.transformer = GPTJModel(config, model_config.max_model_len)
        self.lm_head = ParallelLMHead(config.vocab_size, config.n_embd, bias=True, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids, positions)  # [T] -> [T, hidden]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32."""
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(
            self, self._hf_to_ours(self.transformer.own_layer_weights(weights)),
            self.packed_modules_mapping, self._skip,
        )  # fmt: skip

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        head_dim = self.config.n_embd // self.config.n_head
        for name, tensor in weights:
            if name.endswith((".attn.q_proj.weight", ".attn.k_proj.weight")):
                # (by row index: a GGUF weight in its blocks moves whole rows)
                rows = interleaved_to_neox_rows(torch.arange(tensor.shape[0]), head_dim,
                                                _rotary_dim(self.config))  # fmt: skip
                tensor = take_rows(tensor, rows)
            yield name, tensor

    def _skip(self, name: str) -> bool:
        # Old checkpoints store the causal mask buffers.
        return name.endswith((".attn.bias", ".attn.masked_bias"))
