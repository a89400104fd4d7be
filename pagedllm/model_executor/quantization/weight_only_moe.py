"""--quantization int8|int4 for the MoE experts: each expert's gate|up and down matrices are
quantized as they arrive (no float copy of the experts is ever held) and repacked after loading
into one kernels.QuantizedWeight per expert and projection, the same layouts and kernels as the
weight-only linear layers. Experts still run only on the tokens routed to them (FusedMoE).

    layer.gate_up_kernels[e]: [2*I, H]  rows [ gate: I | up: I ]
    layer.down_kernels[e]:    [H, I]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pagedllm.model_executor.layers.weight_utils import set_weight_attrs
from pagedllm.model_executor.quantization.base import FusedMoEMethodBase
from pagedllm.model_executor.quantization.group_quant import GroupQuant, concat_rows, to_kernel

Quantizer = Callable[[torch.Tensor], GroupQuant]
"""A float weight [N, K] -> its quantized form (per row or per column group: rows stack)."""
_PROJECTIONS = ("gate_up_proj", "down_proj")
_ROW_BLOCK = {"gate": 0, "up": 1, "down": 0}
"""Position of a per-expert checkpoint matrix among the row blocks of its projection."""


class WeightOnlyFusedMoEMethod(FusedMoEMethodBase):
    def __init__(self, quantize: Quantizer) -> None:
        self.quantize = quantize

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, params_dtype):
        # projection -> {(expert, row block): GroupQuant}, filled by the loaders
        layer._expert_shards = {name: {} for name in _PROJECTIONS}
        layer._expert_shapes = {"gate_up_proj": (2 * intermediate_size, hidden_size),
                                "down_proj": (hidden_size, intermediate_size)}  # fmt: skip
        for name in _PROJECTIONS:
            placeholder = nn.Parameter(torch.empty(0), requires_grad=False)
            layer.register_parameter(name, placeholder)
            set_weight_attrs(placeholder, weight_loader=self._collector(layer, name))

    def _collector(self, layer: nn.Module, name: str):
        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
            # (tensor parallelism: the rank's experts, or every expert's intermediate slice, are
            # cut from the float tensor before it is quantized, as FusedMoE.weight_loader does)
            rows, cols = layer._expert_shapes[name]
            if shard_id is None:  # the stacked [E, rows, cols] tensor
                loaded = layer._rank_slice(param, loaded)
                _check_shape(name, loaded, (layer.num_local_experts, rows, cols))
                for local in range(layer.num_local_experts):
                    layer._expert_shards[name][(local, 0)] = self.quantize(loaded[local])
                return
            expert, which = shard_id
            local = expert - layer.first_expert
            if not 0 <= local < layer.num_local_experts:
                return  # another rank's expert
            loaded = layer.expert_matrix_slice(loaded, which)
            _check_shape(f"expert {expert} {which}", loaded, (rows // 2, cols)
                         if which in ("gate", "up") else (rows, cols))  # fmt: skip
            layer._expert_shards[name][(local, _ROW_BLOCK[which])] = self.quantize(loaded)

        return load

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        collected = layer._expert_shards
        del layer._expert_shards, layer._expert_shapes
        for name in _PROJECTIONS:
            delattr(layer, name)
        experts = layer.num_local_experts
        layer.gate_up_kernels = _per_expert_kernels(collected["gate_up_proj"], experts)
        layer.down_kernels = _per_expert_kernels(collected["down_proj"], experts)

    def apply(self, layer, expert, x):  # [n, H] -> [n, H]
        return layer.down_kernels[expert](layer.act_fn(layer.gate_up_kernels[expert](x)))


def _per_expert_kernels(shards: dict[tuple[int, int], GroupQuant], num_experts: int):
    blocks = [[shards[key] for key in sorted(shards) if key[0] == e] for e in range(num_experts)]
    return nn.ModuleList(to_kernel(concat_rows(parts)) for parts in blocks)


def _check_shape(what: str, loaded: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(loaded.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(loaded.shape)}, expected {expected}")
