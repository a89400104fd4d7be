"""CustomOp: a layer with a reference computation and per-platform ones, one of them chosen
once, when the layer is built.

Layers are built under the target device and default dtype (model_loader.get_model), so the
choice reads those: forward_cpu (pagedllm's compiled kernels) where the device is the CPU, the
dtype float32 and the kernels are built; forward_cuda on CUDA (forward_native until there are
CUDA kernels); else forward_native (plain PyTorch operators, the reference every other form
must match). A forward then makes no platform or dtype check, only the shape checks a layer
documents where its input shapes really vary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pagedllm.kernels import cpu_kernels_available


def compiled_cpu_kernels_apply() -> bool:
    """The compiled CPU kernels serve a layer built now: float32 on the CPU, kernels built."""
    return (
        torch.get_default_device().type == "cpu"
        and torch.get_default_dtype() == torch.float32
        and cpu_kernels_available()
    )


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._forward_method: Callable[..., Any] = self.dispatch_forward()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward_method(*args, **kwargs)

    def dispatch_forward(self) -> Callable[..., Any]:
        """The forward for the device and dtype the layer is being built under."""
        if torch.get_default_device().type == "cuda":
            return self.forward_cuda
        if compiled_cpu_kernels_apply():
            return self.forward_cpu
        return self.forward_native

    @property
    def runs_compiled_cpu_kernel(self) -> bool:
        """forward_cpu was chosen (float32 on the CPU, kernels built): what the fused CPU stack
        computes for this layer is what its eager forward computes."""
        return self._forward_method == self.forward_cpu

    def forward_native(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward_cpu(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_cuda(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)
