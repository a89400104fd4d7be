"""The quantization seam: a method creates a layer's weights, computes with them, and may repack
them once after loading. Linear layers never branch on the method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


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
