from pagedllm.config.cache import CacheConfig
from pagedllm.config.device import DeviceConfig
from pagedllm.config.engine import EngineConfig
from pagedllm.config.lora import LoRAConfig
from pagedllm.config.model import ModelConfig
from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.config.parallel import ParallelConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.config.speculative import SpeculativeConfig
from pagedllm.config.structured_outputs import StructuredOutputsConfig

__all__ = [
    "CacheConfig", "DeviceConfig", "EngineConfig", "LoRAConfig", "ModelConfig", "MultiModalConfig",
    "ParallelConfig",
    "SchedulerConfig",
    "SpeculativeConfig",
    "StructuredOutputsConfig",
]
