"""Multi-LoRA serving: many PEFT adapters over one base model, mixed in one batch.

Torch-free at the top level (the engine core's scheduler and the API process import
LoRARequest); the tensor side (layers, manager, weights) is imported by the worker only.
"""

from pagedllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
