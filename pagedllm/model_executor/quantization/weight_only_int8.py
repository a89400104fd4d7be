"""--quantization int8: a float checkpoint's linear weights become symmetric int8 with one scale
per output row at load (each shard as it arrives: no float copy of the model is ever held).
Computed by aten._weight_int8pack_mm in bf16 (see kernels.py for why). MoE experts likewise, one
kernel per expert (weight_only_moe.py); the routers stay float (base.ROUTER_GATES)."""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.model_executor.quantization.base import ROUTER_GATES, QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import (
    concat_rows,
    quantize_int8_per_channel,
    to_kernel,
)
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod
from pagedllm.model_executor.quantization.weight_only_moe import WeightOnlyFusedMoEMethod


class Int8LinearMethod(RepackedLinearMethod):
    def on_load(self, name, loaded):
        return quantize_int8_per_channel(loaded)

    def repack(self, layer, shards):
        # per-row scales: shards stack without regrouping
        return to_kernel(concat_rows(shards["weight"]))


class Int8Config(QuantizationConfig):
    name = "int8"

    def __init__(self, modules_to_not_convert: Sequence[str] = ()) -> None:
        super().__init__((*ROUTER_GATES, *modules_to_not_convert))

    def get_quant_method(self, layer, prefix):
        return Int8LinearMethod()

    def get_moe_method(self, layer, prefix):
        return WeightOnlyFusedMoEMethod(quantize_int8_per_channel)
