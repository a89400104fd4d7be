"""The quantization seam: a method creates a layer's weights, computes with them, and may repack
them once after loading. Linear layers never branch on the method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class FusedWeightSpec:
    """A linear layer's weight in a layout the compiled CPU kernels compute, for execution
    strategies that call them directly (worker/fused_cpu_stack.py) instead of `apply`.

    layout "dense": tensors {"weight": float32 [out, in]}; "packed_group": tensors {"codes",
    "scales", "mins"} of quantization/kernels.py PackedGroupWeight, with its group_size and u4.
    The bias is not part of it (it stays the layer's, in the model dtype).
    """

    layout: Literal["dense", "packed_group"]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    group_size: int = 0
    u4: bool = False


class QuantizeMethodBase(ABC):
    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
    ) -> None:
        """Register the layer's parameters (each with a `weight_loader` attribute).

        output_sizes: the rows of each shard of a merged layer (one entry if not merged).
        """

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x: [T, input_size] -> [T, sum(output_sizes)], bias included."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights into the layout `apply` wants (default: nothing to do)."""

    def fused_weight_spec(self, layer: nn.Module) -> FusedWeightSpec | None:
        """The layer's weight for the fused CPU kernels, or None where they cannot compute it
        (default: None; `apply` is then the only way to run the layer)."""
        return None


class QuantizationConfig(ABC):
    """One quantization scheme for a whole model: built once from the checkpoint's
    `quantization_config` (AWQ, GPTQ) or from the method name alone (int8, int4, gguf), it hands
    each linear layer its QuantizeMethodBase."""

    name: str = ""

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> QuantizationConfig:
        """Build from the transformers config (default: the scheme has no parameters)."""
        return cls()

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method computing `layer`, or None to leave it unquantized."""
