"""LoRARequest: which adapter a request runs under (vLLM's name and fields)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRARequest:
    """A PEFT adapter on disk, named by the user.

    lora_int_id identifies the adapter inside the engine (slots, CPU cache, prefix-cache keys):
    two requests with the same id must name the same adapter. It is >= 1 (the base model has
    no id).
    """

    lora_name: str
    lora_int_id: int
    lora_path: str
    """A directory holding adapter_config.json and adapter_model.safetensors."""
    base_model_name: str | None = None
    """The served model this adapter belongs to (the server's /v1/models `parent`)."""

    def __post_init__(self) -> None:
        if not self.lora_name:
            raise ValueError("lora_name must not be empty")
        if not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be an integer >= 1, got {self.lora_int_id!r}")
        if not self.lora_path:
            raise ValueError(f"LoRA {self.lora_name!r}: lora_path must not be empty")
