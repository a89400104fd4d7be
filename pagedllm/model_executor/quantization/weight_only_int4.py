"""--quantization int4: a float checkpoint's linear weights become asymmetric 4-bit codes with a
scale and minimum per group of `group_size` input columns at load (each shard as it arrives).
Computed by aten._weight_int4pack_mm_for_cpu in bf16 (see kernels.py). MoE experts likewise, one
kernel per expert (weight_only_moe.py); the routers stay float (base.ROUTER_GATES)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from pagedllm.model_executor.quantization.base import ROUTER_GATES, QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import (
    GroupQuant,
    concat_rows,
    quantize_int4_grouped,
    to_kernel,
)
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod
from pagedllm.model_executor.quantization.weight_only_moe import WeightOnlyFusedMoEMethod

DEFAULT_GROUP_SIZE = 32


class Int4LinearMethod(RepackedLinearMethod):
    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def on_load(self, name, loaded):
        return quantize_int4(loaded, self.group_size)

    def repack(self, layer, shards):
        return to_kernel(concat_rows(shards["weight"]))


def quantize_int4(w: torch.Tensor, group_size: int) -> GroupQuant:
    k = w.shape[1]
    # NOTE: a layer whose in_features the group does not divide gets one group per row.
    return quantize_int4_grouped(w, group_size if k % group_size == 0 else k)


class Int4Config(QuantizationConfig):
    name = "int4"

    def __init__(
        self, group_size: int = DEFAULT_GROUP_SIZE, modules_to_not_convert: Sequence[str] = ()
    ) -> None:
        super().__init__((*ROUTER_GATES, *modules_to_not_convert))
        self.group_size = group_size

    def get_quant_method(self, layer, prefix):
        return Int4LinearMethod(self.group_size)

    def get_moe_method(self, layer, prefix):
        return WeightOnlyFusedMoEMethod(partial(quantize_int4, group_size=self.group_size))
