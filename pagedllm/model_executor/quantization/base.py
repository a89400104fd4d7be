"""The quantization seam: a method creates a layer's weights, computes with them, and may repack
them once after loading. Linear layers never branch on the method."""

from __future__ import annotations

from abc import ABC, abstractmethod

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
