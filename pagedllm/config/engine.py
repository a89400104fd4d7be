"""EngineConfig: the aggregate of every concern's config, built once by EngineArgs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.config.cache import CacheConfig
from pagedllm.config.device import DeviceConfig
from pagedllm.config.lora import LoRAConfig
from pagedllm.config.model import ModelConfig
from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.config.structured_outputs import StructuredOutputsConfig


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    device: DeviceConfig
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
    speculative: SpeculativeConfig | None = None
    """Speculative decoding (None: off)."""
    lora: LoRAConfig | None = None
    """Multi-LoRA serving (None: off, requests may not name an adapter)."""
    multimodal: MultiModalConfig = field(default_factory=MultiModalConfig)
    """Image limits and sources (used by vision-language models only)."""

    def __post_init__(self) -> None:
        if not self.scheduler.enable_chunked_prefill and (
            self.scheduler.max_num_batched_tokens < self.model.max_model_len
        ):
            raise ValueError(
                f"with chunked prefill disabled, max_num_batched_tokens "
                f"({self.scheduler.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.model.max_model_len})"
            )
