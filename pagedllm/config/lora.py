"""LoRAConfig: how many adapters an engine serves at once (vLLM's --max-loras & co)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    max_loras: int = 1
    """Adapters resident in the layers' slots at once: the most distinct adapters in one step."""
    max_lora_rank: int = 16
    """Largest adapter rank accepted; every slot is this wide."""
    max_cpu_loras: int | None = None
    """Adapters kept loaded in CPU memory (an LRU that feeds the slots); None: max_loras."""

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be >= 1, got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras "
                             f"({self.max_loras})")

    @property
    def cpu_capacity(self) -> int:
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras
