"""IBM Granite (3.x dense): Llama's block with four scalar multipliers: the token embedding
times `embedding_multiplier`, each sub-block's output times `residual_multiplier` before the
residual add, `attention_multiplier` as the softmax scale (in place of head_dim ** -0.5) and the
logits divided by `logits_scaling`.

The residual multiplier is folded into the checkpoint's o_proj and down_proj rows at load
(m * (W x + b) = (m W) x + m b), so the decoder layer is Llama's own block and runs on the
fused CPU stack; folding before the weights reach their loaders keeps it right under load-time
quantization too, and a GGUF weight kept in its blocks takes it in its group scales. (Rounding
differs from HF's multiply-after by an ulp, far inside tolerance.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class GraniteDecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = getattr(config, "attention_bias", False)
        return LlamaAttention(
            config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias,
            scale=config.attention_multiplier,
        )  # fmt: skip


class GraniteModel(LlamaModel):
    decoder_layer_cls = GraniteDecoderLayer

    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        super().__init__(config, max_position, prefix)
        self.embedding_multiplier = float(config.embedding_multiplier)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        return self.embed_tokens(input_ids) * self.embedding_multiplier


class GraniteForCausalLM(LlamaForCausalLM):
    model_cls = GraniteModel
    residual_scaled: tuple[str, ...] = (".self_attn.o_proj.", ".mlp.down_proj.")
    """The projections whose outputs join the residual stream (scaled by residual_multiplier),
    by our parameter names."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__(model_config)
        config = model_config.hf_config
        self.logits_processor = LogitsProcessor(
            config.vocab_size, scale=1.0 / config.logits_scaling
        )

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return super().load_weights(self.fold_residual_multiplier(weights))

    def fold_residual_multiplier(
        self, weights: Iterable[tuple[str, Any]]
    ) -> Iterator[tuple[str, Any]]:
        multiplier = float(self.config.residual_multiplier)
        for name, tensor in weights:
            if multiplier != 1.0 and any(part in name for part in self.residual_scaled):
                if hasattr(tensor, "scaled"):  # GGUF blocks (model_loader.gguf.GGUFWeight)
                    yield name, tensor.scaled(multiplier)  # (their scales take it)
                    continue
                if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                    raise NotImplementedError(
                        f"{name}: Granite's residual_multiplier is folded into float weights; "
                        f"this checkpoint stores {type(tensor).__name__}"
                    )
                tensor = tensor * multiplier
            yield name, tensor
