"""HF architecture name -> our model class, imported only when that architecture is used."""

from __future__ import annotations

from torch import nn

from pagedllm.utils.registry import Registry

MODEL_REGISTRY = Registry("model architecture")
_MODELS = "pagedllm.model_executor.models"
MODEL_REGISTRY.register("LlamaForCausalLM", f"{_MODELS}.llama", "LlamaForCausalLM")
# Mistral is Llama with a sliding window on every layer (config.sliding_window).
MODEL_REGISTRY.register("MistralForCausalLM", f"{_MODELS}.llama", "LlamaForCausalLM")
MODEL_REGISTRY.register("Qwen2ForCausalLM", f"{_MODELS}.qwen2", "Qwen2ForCausalLM")
MODEL_REGISTRY.register("Qwen3ForCausalLM", f"{_MODELS}.qwen3", "Qwen3ForCausalLM")
MODEL_REGISTRY.register("GemmaForCausalLM", f"{_MODELS}.gemma", "GemmaForCausalLM")
MODEL_REGISTRY.register("Gemma2ForCausalLM", f"{_MODELS}.gemma2", "Gemma2ForCausalLM")
MODEL_REGISTRY.register("Gemma3ForCausalLM", f"{_MODELS}.gemma3", "Gemma3ForCausalLM")


def get_model_class(architecture: str) -> type[nn.Module]:
    """Raises ValueError listing the supported architectures if `architecture` is unknown."""
    return MODEL_REGISTRY.get(architecture)


def supported_architectures() -> list[str]:
    return MODEL_REGISTRY.names()
