"""GPT-2: learned absolute position embeddings, pre-LayerNorm blocks (with bias), one fused c_attn
q|k|v projection, a gelu_new MLP, and the LM head tied to the token embedding.

The checkpoint's Conv1D weights are stored transposed ([in, out]); they are transposed at load.
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
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.pipeline_stage import PipelineStageStack, add_and_norm


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = head_dim = hidden // num_heads
        self.c_attn = QKVParallelLinear(
            hidden, head_dim, num_heads, num_heads, bias=True, prefix=f"{prefix}.c_attn"
        )
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True, prefix=f"{prefix}.c_proj")
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.attn = Attention(num_heads, head_dim, scale, num_heads, prefix=f"{prefix}.attn")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        q, k, v = self.c_attn(hidden_states).chunk(3, dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPT2MLP(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        hidden = config.hidden_size
        inner = config.n_inner or 4 * hidden
        self.c_fc = ColumnParallelLinear(hidden, inner, bias=True, prefix=f"{prefix}.c_fc")
        self.act = get_act_fn(config.activation_function)
        self.c_proj = RowParallelLinear(inner, hidden, bias=True, prefix=f"{prefix}.c_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(.)); residual adds fused in the norms."""

    attn_cls: type[nn.Module] = GPT2Attention

    def __init__(self, config: Any, layer_idx: int, prefix: str) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps)
        self.attn = self.attn_cls(config, layer_idx, f"{prefix}.attn")
        self.ln_2 = LayerNorm(config.hidden_size, eps)
        self.mlp = GPT2MLP(config, f"{prefix}.mlp")

    def forward(
        self,
        positions: torch.Tensor,  # [T]; unused: positions enter once, through wpe
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, residual = self.ln_1(hidden_states, residual)
        hidden_states = self.attn(hidden_states)
        hidden_states, residual = self.ln_2(hidden_states, residual)
        return self.mlp(hidden_states), residual


class GPT2Model(PipelineStageStack):
    block_cls: type[nn.Module] = GPT2Block

    def __init__(self, config: Any, prefix: str = "transformer") -> None:
        super().__init__()
        self.wte = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.wte"
        )
        self.wpe = VocabParallelEmbedding(
            config.max_position_embeddings, config.hidden_size, prefix=f"{prefix}.wpe"
        )
        self.h = self.build_stage_layers(
            config.num_hidden_layers, config.hidden_size,
            lambda i: self.block_cls(config, i, f"{prefix}.h.{i}"),
        )  # fmt: skip
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.stage_input(
            input_ids.shape[0], lambda: self.wte(input_ids) + self.wpe(positions)  # [T, hidden]
        )
        for block in self.stage_layers(self.h):
            hidden_states, residual = block(positions, hidden_states, residual)
        return self.stage_output(hidden_states, residual, add_and_norm(self.ln_f))


class GPT2LMHeadModel(nn.Module):
    supports_tensor_parallel = True
    """c_attn splits by heads (the fused checkpoint tensor cut per q/k/v shard at load), c_fc by
    columns, both c_proj row-parallel; wte/wpe vocab-parallel (GPT-BigCode too)."""
    supports_pipeline_parallel = True  # (GPT2Model: PipelineStageStack; GPT-BigCode too)
    conv1d_modules = ("c_attn", "c_proj", "c_fc")
    """Modules whose checkpoint weight is a transformers Conv1D ([in, out])."""
    model_cls: type[GPT2Model] = GPT2Model

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.transformer = self.model_cls(config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head = self.transformer.wte
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
        for name, tensor in weights:
            # The original OpenAI checkpoints name the body without the "transformer." prefix.
            if not name.startswith(("transformer.", "lm_head.")):
                name = f"transformer.{name}"
            module = name.split(".")[-2]
            if module in self.conv1d_modules and name.endswith(".weight"):
                tensor = tensor.t()
            yield name, tensor

    def _skip(self, name: str) -> bool:
        # Old checkpoints store the causal mask buffers (".attn.bias", ".attn.masked_bias").
        return name.endswith((".attn.bias", ".attn.masked_bias")) or (
            self.tie_word_embeddings and name.startswith("lm_head.")
        )
