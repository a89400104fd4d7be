"""--quantization int4: a float checkpoint's linear weights become asymmetric 4-bit codes with a
scale and minimum per group of `group_size` input columns at load (each shard as it arrives).
Computed by aten._weight_int4pack_mm_for_cpu in bf16 (see kernels.py)."""

from __future__ import annotations

from pagedllm.model_executor.quantization.base import QuantizationConfig
from pagedllm.model_executor.quantization.group_quant import (
    concat_rows,
    quantize_int4_grouped,
    to_kernel,
)
from pagedllm.model_executor.quantization.repacked import RepackedLinearMethod

DEFAULT_GROUP_SIZE = 32


class Int4LinearMethod(RepackedLinearMethod):
    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def on_load(self, name, loaded):
        k = loaded.shape[1]
        # NOTE: a layer whose in_features the group does not divide gets one group per row.
        return quantize_int4_grouped(loaded, self.group_size if k % self.group_size == 0 else k)

    def repack(self, layer, shards):
        return to_kernel(concat_rows(shards["weight"]))


class Int4Config(QuantizationConfig):
    name = "int4"

    def __init__(self, group_size: int = DEFAULT_GROUP_SIZE) -> None:
        self.group_size = group_size

    def get_quant_method(self, layer, prefix):
        return Int4LinearMethod(self.group_size)
