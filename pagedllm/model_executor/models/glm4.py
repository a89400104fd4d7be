"""GLM (GLM-4-9B-0414's predecessor `GlmForCausalLM`) and GLM-4 (`Glm4ForCausalLM`): Llama's
attention with q/k/v bias (no o_proj bias) and partial rotary (`partial_rotary_factor`, half the
head by default) pairing adjacent dims (GPT-J style), and a SwiGLU MLP whose gate and up
projections the checkpoint stores as one `gate_up_proj` ([gate | up] rows).

GLM's block is Llama's pre-norm block. GLM-4 adds sandwich norms: each sub-block's output is
normalized again before the residual add, which is Gemma 2's block with plain RMSNorm, so GLM-4's
four norms take Gemma 2's roles:
    GLM-4 checkpoint            ours (Gemma 2's role)
    input_layernorm             input_layernorm             before attention
    post_self_attn_layernorm    post_attention_layernorm    on the attention output
    post_attention_layernorm    pre_feedforward_layernorm   before the MLP
    post_mlp_layernorm          post_feedforward_layernorm  on the MLP output

At load the interleaved rotary becomes our rotate-half one by reordering the q/k rows
(layers/rotary.py interleaved_to_neox_rows) and `gate_up_proj` is split into its two shards (so a
tensor-parallel rank takes its slice of each); both blocks then run on the fused CPU stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from pagedllm.model_executor.layers.rotary import RotaryEmbedding, interleaved_to_neox_rows
from pagedllm.model_executor.layers.weight_utils import take_rows
from pagedllm.model_executor.models.gemma2 import Gemma2DecoderLayer
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    head_dim_of,
)

_ROTATED = (".self_attn.q_proj.", ".self_attn.k_proj.")
"""Checkpoint tensors whose rows (per head) follow the interleaved rotary layout."""

_GLM4_NORMS = {
    "post_self_attn_layernorm": "post_attention_layernorm",
    "post_attention_layernorm": "pre_feedforward_layernorm",
    "post_mlp_layernorm": "post_feedforward_layernorm",
}
"""GLM-4's checkpoint norm -> the module of the same role in Gemma 2's block."""


class GlmDecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = getattr(config, "attention_bias", True)
        return LlamaAttention(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=False)


class Glm4DecoderLayer(GlmDecoderLayer):
    """x + post_attention_norm(attn(input_norm(x))), then
    x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))."""

    # NOTE: Gemma 2's forward itself, so the fused CPU stack recognizes the block.
    forward = Gemma2DecoderLayer.forward

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        self.pre_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)


class GlmModel(LlamaModel):
    decoder_layer_cls = GlmDecoderLayer


class Glm4Model(LlamaModel):
    decoder_layer_cls = Glm4DecoderLayer


class GlmForCausalLM(LlamaForCausalLM):
    model_cls = GlmModel

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return super().load_weights(self._hf_to_ours(weights))

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        head_dim = head_dim_of(self.config)
        rotary_dim = self.model.layers[0].self_attn.rotary_emb.rotary_dim
        for name, tensor in weights:
            num_rows = tensor.shape[0]
            if any(part in name for part in _ROTATED):
                order = interleaved_to_neox_rows(torch.arange(num_rows), head_dim, rotary_dim)
                tensor = take_rows(tensor, order)
            if ".mlp.gate_up_proj." in name:  # [gate | up] rows
                gate, up = torch.arange(num_rows).chunk(2)
                yield name.replace("gate_up_proj", "gate_proj"), take_rows(tensor, gate)
                yield name.replace("gate_up_proj", "up_proj"), take_rows(tensor, up)
                continue
            yield self.rename(name), tensor

    def rename(self, name: str) -> str:
        """Our name of a checkpoint tensor (GLM: its own)."""
        return name


class Glm4ForCausalLM(GlmForCausalLM):
    model_cls = Glm4Model

    def rename(self, name: str) -> str:
        for theirs, ours in _GLM4_NORMS.items():
            if f".{theirs}." in name:
                return name.replace(f".{theirs}.", f".{ours}.")
        return name
