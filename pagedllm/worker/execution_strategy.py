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
from pagedllm.worker.fused_cpu_stack import (
    AllReduce,
    FusedCpuStack,
    FusedStackStats,
    UnsupportedLayer,
    build_fused_cpu_stack,
)

logger = init_logger(__name__)

EAGER = "eager"
FUSED_CPU_STACK = "fused_cpu_stack"


@dataclass(frozen=True)
class ExecutionStrategy:
    name: str
    """EAGER or FUSED_CPU_STACK."""
    declined: str | None = None
    """Eager: why the fused stack does not run (None where it was never a candidate)."""
    tensor_parallel_size: int = 1
    """The fused stack under -tp N: each layer cut at its two all-reduces."""

    def describe(self) -> str:
        if self.declined is not None:
            return f"{self.name} ({self.declined})"
        if self.tensor_parallel_size > 1:
            return (f"{self.name} (tensor_parallel_size={self.tensor_parallel_size}: each layer "
                    "in two calls, o_proj's and down_proj's partial sums all-reduced between)")
        return self.name


def select_execution_strategy(
    model: nn.Module, enforce_eager: bool, tensor_parallel_size: int = 1
) -> ExecutionStrategy:
    """Install the fastest strategy `model` qualifies for (its KV caches bound) and log it,
    with the reason where it stays eager. A pipeline stage fuses its own layers."""
    strategy = _install(model, enforce_eager, tensor_parallel_size)
    logger.info("execution: %s", strategy.describe())
    return strategy


def _install(model: nn.Module, enforce_eager: bool, tp: int) -> ExecutionStrategy:
    # (a vision-language model's decoder is its `language_model`: LlamaModel's forward runs the
    # installed runner on the rows the worker merged)
    stack = getattr(model, "model", None)
    if stack is None:
        stack = getattr(model, "language_model", None)
    if stack is None or not hasattr(stack, "layer_runner"):
        return ExecutionStrategy(EAGER, f"{type(model).__name__} exposes no decoder layer stack")
    stack.layer_runner = None
    if enforce_eager:
        return ExecutionStrategy(EAGER, "enforce_eager")
    # a pipeline stage holds only layers [start_layer, end_layer) (PPMissingLayer elsewhere)
    start, end = getattr(stack, "start_layer", 0), getattr(stack, "end_layer", len(stack.layers))
    try:
        stack.layer_runner = build_fused_cpu_stack(stack.layers[start:end], _all_reduce(tp))
    except UnsupportedLayer as e:
        return ExecutionStrategy(EAGER, f"{e}; the fused stack does not run it")
    if tp > 1:
        return ExecutionStrategy(FUSED_CPU_STACK, tensor_parallel_size=tp)
    return ExecutionStrategy(FUSED_CPU_STACK)


def _all_reduce(tp: int) -> AllReduce | None:
    """The tensor-parallel sum the fused stack calls between a layer's halves (None: one
    rank, the layers run whole)."""
    if tp == 1:
        return None
    from pagedllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce


def execution_stats(model: nn.Module, strategy: ExecutionStrategy | None) -> dict[str, object]:
    """The strategy's name and the fused stack's step counts (FusedStackStats; zeros when it
    does not run): what proves which path a rank's steps took."""
    runner = getattr(getattr(model, "model", None), "layer_runner", None)
    stats = runner.stats if isinstance(runner, FusedCpuStack) else FusedStackStats()
    return {"strategy": None if strategy is None else strategy.describe(),
            "fused_steps": stats.steps, "fused_tensor_parallel_steps": stats.tensor_parallel_steps}
