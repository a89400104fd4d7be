"""Gemma: Llama's block with GeGLU (gelu tanh), RMSNorm scaled by (1 + w), the token embedding
multiplied by sqrt(hidden_size), and the LM head tied to the embedding."""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.model_executor.layers.layernorm import GemmaRMSNorm
from pagedllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class GemmaDecoderLayer(LlamaDecoderLayer):
    norm_cls = GemmaRMSNorm


class GemmaModel(LlamaModel):
    decoder_layer_cls = GemmaDecoderLayer
    norm_cls = GemmaRMSNorm

    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__(config, max_position, prefix)
        # NOTE: in the model dtype, as HF rounds it (sqrt(640) is 25.25 in bfloat16).
        normalizer = torch.tensor(config.hidden_size**0.5, dtype=torch.get_default_dtype())
        self.register_buffer("normalizer", normalizer, persistent=False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        hidden_states = self.embed_tokens(input_ids)
        return hidden_states * self.normalizer.to(hidden_states.dtype)


class GemmaForCausalLM(LlamaForCausalLM):
    model_cls = GemmaModel
