"""Per-step state for the model's layers (attention metadata, the LoRA mapping), scoped to one
forward pass.

The runner wraps each forward in `with set_forward_context(metadata):`; attention layers read it
with `get_forward_context()`. Nesting is refused and the context is always cleared.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class ForwardContext:
    attn_metadata: Any
    """The selected backend's metadata for this step (built once, shared by all layers)."""
    lora_mapping: Any = None
    """Multi-LoRA: each token's adapter slot (pagedllm.lora.layers.LoRAMapping); None when no
    token of the step runs under an adapter."""


_forward_context: ForwardContext | None = None


@contextmanager
def set_forward_context(attn_metadata: Any, lora_mapping: Any = None
                        ) -> Iterator[ForwardContext]:
    global _forward_context
    if _forward_context is not None:
        raise RuntimeError("set_forward_context does not nest")
    _forward_context = ForwardContext(attn_metadata=attn_metadata, lora_mapping=lora_mapping)
    try:
        yield _forward_context
    finally:
        _forward_context = None


def get_forward_context() -> ForwardContext:
    if _forward_context is None:
        raise RuntimeError("no forward context: call the model inside set_forward_context()")
    return _forward_context


def current_lora_mapping() -> Any:
    """The step's LoRA mapping, or None (no adapter token this step, or no forward context: a
    layer called on its own)."""
    return None if _forward_context is None else _forward_context.lora_mapping
