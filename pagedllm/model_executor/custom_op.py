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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


_FLOAT_WEIGHT_DTYPE: ContextVar[torch.dtype | None] = ContextVar("float_weights", default=None)


@contextmanager
def float_weight_storage(dtype: torch.dtype | None) -> Iterator[None]:
    """Layers built inside keep the float weights the compiled kernels read (dense linears, the
    vocabulary table / LM head) in `dtype`: bfloat16 or float16 for a half model computed in
    float32 on the CPU (ModelConfig.compute_dtype); None: the default dtype."""
    token = _FLOAT_WEIGHT_DTYPE.set(dtype)
    try:
        yield
    finally:
        _FLOAT_WEIGHT_DTYPE.reset(token)


def float_weight_dtype(compiled: bool) -> torch.dtype:
    """The dtype a layer built now stores a float weight in: the scope's where the compiled
    kernels (`compiled`) compute it, else the default dtype."""
    scoped = _FLOAT_WEIGHT_DTYPE.get()
    return scoped if compiled and scoped is not None else torch.get_default_dtype()


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
