"""RepackedLinearMethod: the shared shape of every weight-only method here.

create_weights registers one placeholder parameter per checkpoint tensor name ("weight", or
"qweight"/"qzeros"/"scales"/...) whose weight_loader only *collects* what it is given, shard by
shard (`on_load` may transform it on arrival, e.g. quantize a float shard at once so no float
copy of the model is ever held). process_weights_after_loading hands the collected shards to
`repack`, which returns a kernels.QuantizedWeight stored as `layer.qweight_kernel`; the
placeholders are then removed. apply = that kernel (+ bias, kept in the model dtype).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.weight_utils import create_bias, set_weight_attrs
from pagedllm.model_executor.quantization.base import FusedWeightSpec, QuantizeMethodBase
from pagedllm.model_executor.quantization.kernels import QuantizedWeight

Shards = dict[str, list[Any]]
"""checkpoint tensor name -> its shards in row order (one entry for an unmerged layer)."""


class RepackedLinearMethod(QuantizeMethodBase):
    checkpoint_tensors: tuple[str, ...] = ("weight",)
    """The layer's checkpoint tensor names (parameter names of the placeholders)."""

    @property
    def supports_tensor_parallel(self) -> bool:
        """A plain [out, in] "weight" (float, or GGUF blocks) is sliced per rank on arrival,
        before on_load; packed layouts (AWQ, GPTQ: [in/8, out] codes, group zeros) are not."""
        return self.checkpoint_tensors == ("weight",)

    def create_weights(self, layer, input_size, output_sizes, bias, params_dtype):
        layer._quant_shards = {name: {} for name in self.checkpoint_tensors}
        for name in self.checkpoint_tensors:
            placeholder = nn.Parameter(torch.empty(0), requires_grad=False)
            layer.register_parameter(name, placeholder)
            set_weight_attrs(placeholder, weight_loader=self._collector(layer, name))
        create_bias(layer, sum(output_sizes), bias, params_dtype)

    def _collector(self, layer: nn.Module, name: str):
        def load(param: nn.Parameter, loaded: Any, shard_id: int | str | None = None) -> None:
            index = 0 if shard_id is None else layer._shard_index(shard_id)
            if name == "weight":  # this rank's rows / columns (the tensor itself at tp 1)
                loaded = layer._rank_slice(loaded, None if shard_id is None else index)
            layer._quant_shards[name][index] = self.on_load(name, loaded)

        return load

    def on_load(self, name: str, loaded: Any) -> Any:
        """Transform a checkpoint tensor as it arrives (default: keep it as is)."""
        return loaded

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        collected = layer._quant_shards
        del layer._quant_shards
        shards = {name: [by_index[i] for i in sorted(by_index)]
                  for name, by_index in collected.items()}  # fmt: skip
        for name in self.checkpoint_tensors:
            delattr(layer, name)
        layer.qweight_kernel = self.repack(layer, shards)
        kernel = layer.qweight_kernel
        assert kernel.out_features == layer.output_size_per_partition, kernel
        assert kernel.in_features == layer.input_size_per_partition, kernel

    @abstractmethod
    def repack(self, layer: nn.Module, shards: Shards) -> QuantizedWeight:
        """The layer's collected checkpoint shards -> its kernel."""

    def fused_weight_spec(self, layer: nn.Module) -> FusedWeightSpec | None:
        return layer.qweight_kernel.fused_weight_spec()

    def apply(self, layer, x):
        y = layer.qweight_kernel(x)
        return y if layer.bias is None else y + layer.bias


def rank_part(layer: nn.Module, gq: Any, index: int) -> Any:
    """This tensor-parallel rank's part of a decoded whole checkpoint shard (a GroupQuant of
    shard `index`, [N, K] codes): its output rows (column-parallel, QKV heads included) or its
    input columns with their groups (row-parallel: a group may not straddle two ranks)."""
    from pagedllm.model_executor.quantization.group_quant import GroupQuant

    if layer.tp_size == 1 or layer.parallel_role == "replicated":
        return gq
    if layer.parallel_role == "column":
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else layer._rank_slice(t, index).contiguous()
    else:
        width = layer.input_size_per_partition
        if width % gq.group_size:
            raise ValueError(f"{layer.prefix}: groups of {gq.group_size} input rows straddle "
                             f"the ranks' {width}-row slices (tensor_parallel_size="
                             f"{layer.tp_size})")
        groups = width // gq.group_size

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            size = width if t.shape[1] == gq.codes.shape[1] else groups
            return t.narrow(1, layer.tp_rank * size, size).contiguous()
    return GroupQuant(take(gq.codes), take(gq.scales), take(gq.zeros), gq.group_size,
                      gq.unsigned4)
