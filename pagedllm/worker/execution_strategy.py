"""How a model's decoder layers execute: eagerly (each layer a module call, the reference), or
through a faster strategy the worker installs once the KV cache is bound. Today that is the
fused CPU stack (fused_cpu_stack.py); CUDA graphs will be another.

The seam on the model side is declared in models/llama.py: a model whose inner model has
`layers` (its decoder layers) and `layer_runner` (None: eager) can have its stack replaced;
the worker sets `layer_runner` and the model calls it in place of its layer loop. Models
import nothing of this.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pagedllm.logger import init_logger
from pagedllm.worker.fused_cpu_stack import UnsupportedLayer, build_fused_cpu_stack

logger = init_logger(__name__)

EAGER = "eager"
FUSED_CPU_STACK = "fused_cpu_stack"


@dataclass(frozen=True)
class ExecutionStrategy:
    name: str
    """EAGER or FUSED_CPU_STACK."""
    declined: str | None = None
    """Eager: why the fused stack does not run (None where it was never a candidate)."""

    def describe(self) -> str:
        return self.name if self.declined is None else f"{self.name} ({self.declined})"


def select_execution_strategy(
    model: nn.Module, enforce_eager: bool, tensor_parallel_size: int = 1
) -> ExecutionStrategy:
    """Install the fastest strategy `model` qualifies for (its KV caches bound) and log it,
    with the reason where it stays eager. A pipeline stage fuses its own layers."""
    strategy = _install(model, enforce_eager, tensor_parallel_size)
    logger.info("execution: %s", strategy.describe())
    return strategy


def _install(model: nn.Module, enforce_eager: bool, tp: int) -> ExecutionStrategy:
    stack = getattr(model, "model", None)
    if stack is None or not hasattr(stack, "layer_runner"):
        return ExecutionStrategy(EAGER, f"{type(model).__name__} exposes no decoder layer stack")
    stack.layer_runner = None
    if enforce_eager:
        return ExecutionStrategy(EAGER, "enforce_eager")
    if tp > 1:
        # NOTE: a row-parallel o_proj / down_proj leaves partial sums that must be all-reduced
        # before the residual add, which the kernel fuses into the next norm in C++ (see
        # docs/distributed.md, "TP and the fused stack")
        return ExecutionStrategy(EAGER, f"tensor_parallel_size={tp}: the fused stack has no "
                                 "all-reduce between a layer's o_proj/down_proj and its "
                                 "residual add")
    # a pipeline stage holds only layers [start_layer, end_layer) (PPMissingLayer elsewhere)
    start, end = getattr(stack, "start_layer", 0), getattr(stack, "end_layer", len(stack.layers))
    try:
        stack.layer_runner = build_fused_cpu_stack(stack.layers[start:end])
    except UnsupportedLayer as e:
        return ExecutionStrategy(EAGER, f"{e}; the fused stack does not run it")
    return ExecutionStrategy(FUSED_CPU_STACK)
