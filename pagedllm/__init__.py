"""pagedllm: a paged-KV-cache LLM inference and serving engine.

Public names are imported lazily so `import pagedllm` stays cheap (no torch) for the CLI and the
API server process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagedllm.version import __version__

if TYPE_CHECKING:
    from pagedllm.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
    from pagedllm.entrypoints.llm import LLM
    from pagedllm.lora.request import LoRARequest
    from pagedllm.outputs import (
        CompletionOutput,
        EmbeddingOutput,
        EmbeddingRequestOutput,
        RequestOutput,
    )
    from pagedllm.pooling_params import PoolingParams
    from pagedllm.sampling_params import SamplingParams

_LAZY = {
    "LLM": "pagedllm.entrypoints.llm",
    "LoRARequest": "pagedllm.lora.request",
    "SamplingParams": "pagedllm.sampling_params",
    "RequestOutput": "pagedllm.outputs",
    "CompletionOutput": "pagedllm.outputs",
    "EmbeddingOutput": "pagedllm.outputs",
    "EmbeddingRequestOutput": "pagedllm.outputs",
    "PoolingParams": "pagedllm.pooling_params",
    "BeamSearchParams": "pagedllm.beam_search",
    "BeamSearchOutput": "pagedllm.beam_search",
    "BeamSearchSequence": "pagedllm.beam_search",
}

__all__ = [
    "LLM", "SamplingParams", "PoolingParams", "RequestOutput", "CompletionOutput",
    "EmbeddingOutput", "EmbeddingRequestOutput", "BeamSearchParams", "BeamSearchOutput",
    "BeamSearchSequence", "LoRARequest", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
