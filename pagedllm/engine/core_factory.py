"""The engine core a model needs: the paged one, or the KV-cache-free one of encoders."""

from __future__ import annotations

from pagedllm.config import EngineConfig
from pagedllm.engine.core import EngineCore
from pagedllm.engine.core_base import EngineCoreBase
from pagedllm.engine.pooling_core import PoolingEngineCore


def make_engine_core(config: EngineConfig) -> EngineCoreBase:
    if config.model.is_encoder_only:
        return PoolingEngineCore(config)
    return EngineCore(config)
