"""The quantization config in force while a model is being built.

Models never see quantization: `get_model` builds the model inside `quantization_scope(config)`
and every LinearBase (FusedMoE) created in it asks `scoped_quant_method` (`scoped_moe_method`)
for its method, by its module name (like the `torch.device` context the model is built under).
The scope refuses nesting and always resets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn

from pagedllm.model_executor.quantization.base import (
    FusedMoEMethodBase,
    QuantizationConfig,
    QuantizeMethodBase,
)

_SCOPE: ContextVar[QuantizationConfig | None] = ContextVar("quantization_scope", default=None)


@contextmanager
def quantization_scope(config: QuantizationConfig | None) -> Iterator[None]:
    if _SCOPE.get() is not None:
        raise RuntimeError("quantization_scope does not nest")
    token = _SCOPE.set(config)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scoped_quant_method(layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
    """The scoped config's method for linear `layer`; None outside a scope or for layers left
    float."""
    config = _SCOPE.get()
    return None if config is None else config.linear_method(layer, prefix)


def scoped_moe_method(layer: nn.Module, prefix: str) -> FusedMoEMethodBase | None:
    """The scoped config's method for FusedMoE `layer`'s experts; None: float experts."""
    config = _SCOPE.get()
    return None if config is None else config.moe_method(layer, prefix)
