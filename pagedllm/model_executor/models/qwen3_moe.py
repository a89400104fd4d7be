"""Qwen3-MoE: Qwen3 (per-head q/k RMSNorm) whose sparse layers route each token to the top
num_experts_per_tok of num_experts SwiGLU experts (renormalized when norm_topk_prob), with no
shared expert. Sparse layers as in Qwen2-MoE (mlp_only_layers, decoder_sparse_step)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedllm.model_executor.models.llama import LlamaModel
from pagedllm.model_executor.models.qwen2_moe import (
    Qwen2MoeForCausalLM,
    Qwen2MoeSparseMoeBlock,
    is_sparse_layer,
)
from pagedllm.model_executor.models.qwen3 import Qwen3DecoderLayer


class Qwen3MoeDecoderLayer(Qwen3DecoderLayer):
    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        if is_sparse_layer(config, layer_idx):
            return Qwen2MoeSparseMoeBlock(config, prefix)
        return super().build_mlp(config, layer_idx, prefix)


class Qwen3MoeModel(LlamaModel):
    decoder_layer_cls = Qwen3MoeDecoderLayer


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    """Loads as Qwen2-MoE (per-expert gate_proj / up_proj / down_proj)."""

    model_cls = Qwen3MoeModel
