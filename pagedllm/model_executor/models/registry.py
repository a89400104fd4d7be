"""HF architecture name -> our model class, imported only when that architecture is used."""

from __future__ import annotations

from torch import nn

from pagedllm.utils.registry import Registry

MODEL_REGISTRY = Registry("model architecture")
_LLAMA = "pagedllm.model_executor.models.llama"
MODEL_REGISTRY.register("LlamaForCausalLM", _LLAMA, "LlamaForCausalLM")
MODEL_REGISTRY.register("MistralForCausalLM", _LLAMA, "LlamaForCausalLM")


def get_model_class(architecture: str) -> type[nn.Module]:
    """Raises ValueError listing the supported architectures if `architecture` is unknown."""
    return MODEL_REGISTRY.get(architecture)


def supported_architectures() -> list[str]:
    return MODEL_REGISTRY.names()
