"""Mixtral: Mistral whose MLP is a sparse mixture of experts (block_sparse_moe): a linear router
(gate) picks the top num_experts_per_tok of num_local_experts SwiGLU experts (w1 gate, w3 up,
w2 down) per token, their outputs weighted by the renormalized softmax of the router logits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.linear import ReplicatedLinear
from pagedllm.model_executor.layers.moe import ExpertWeightMapper, FusedMoE
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        num_experts = config.num_local_experts
        # the router: replicated, never quantized (see quantization.base.ROUTER_GATES)
        self.gate = ReplicatedLinear(config.hidden_size, num_experts, prefix=f"{prefix}.gate")
        self.experts = FusedMoE(
            num_experts, config.num_experts_per_tok, config.hidden_size,
            config.intermediate_size, config.hidden_act, renormalize=True,
            prefix=f"{prefix}.experts",
        )  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.experts(hidden_states, self.gate(hidden_states))


class MixtralDecoderLayer(LlamaDecoderLayer):
    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        # NOTE: held as `mlp`; the checkpoint's "block_sparse_moe" is renamed to it at load.
        return MixtralSparseMoeBlock(config, prefix)


class MixtralModel(LlamaModel):
    decoder_layer_cls = MixtralDecoderLayer


class MixtralForCausalLM(LlamaForCausalLM):
    model_cls = MixtralModel

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        experts = ExpertWeightMapper(self.config.num_local_experts, gate="w1", up="w3", down="w2")
        renamed = ((n.replace(".block_sparse_moe.", ".mlp."), t) for n, t in weights)
        return load_packed_weights(
            self, renamed, self.packed_modules_mapping, self._skip, name_mappers=[experts]
        )
