"""GLM-4-MoE (GLM-4.5 / 4.6): Llama-shaped GQA attention (q/k/v bias, optional per-head q/k RMS
norm, rotary over the first partial_rotary_factor of each head, rotate-half), dense MLPs on the
first first_k_dense_replace layers, and on the rest DeepSeek-V3's MoE: sigmoid scores whose
choice adds e_score_correction_bias, grouped top-k, renormalized and scaled weights, plus shared
experts. The MoE block is DeepSeek's (models/deepseek_v2.py, layers/grouped_topk.py); the
checkpoint's next-token-prediction layers past num_hidden_layers are skipped, as for V3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.moe import ExpertWeightMapper
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.deepseek_v2 import (
    DeepseekV2MoE,
    _from_llama_cpp_layout,
    is_moe_layer,
)
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class Glm4MoeSparseBlock(DeepseekV2MoE):
    sigmoid_routing = True


class Glm4MoeDecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        qk_norm = RMSNorm if getattr(config, "use_qk_norm", False) else None
        return LlamaAttention(config, rotary_emb, layer_idx, prefix,
                              qkv_bias=bool(config.attention_bias), o_bias=False,
                              qk_norm=qk_norm)  # fmt: skip

    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        if is_moe_layer(config, layer_idx):
            return Glm4MoeSparseBlock(config, prefix)
        return super().build_mlp(config, layer_idx, prefix)


class Glm4MoeModel(LlamaModel):
    decoder_layer_cls = Glm4MoeDecoderLayer


class Glm4MoeForCausalLM(LlamaForCausalLM):
    # (DeepSeek-V3's MoE block: router replicated, experts split TP-style; Llama's stages)
    model_cls = Glm4MoeModel

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """Per-expert gate_proj / up_proj / down_proj into the stacked experts (stacked ones
        load whole; a GGUF's stacked ones are split per expert first); the rest as Llama's."""
        experts = ExpertWeightMapper(
            self.config.n_routed_experts, gate="gate_proj", up="up_proj", down="down_proj"
        )
        return load_packed_weights(self, _from_llama_cpp_layout(weights),
                                   self.packed_modules_mapping, self._skip,
                                   name_mappers=[experts])  # fmt: skip

    def _skip(self, name: str) -> bool:
        # the multi-token-prediction layers follow the decoder layers in the checkpoint
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
            if int(parts[2]) >= self.config.num_hidden_layers:
                return True
        return super()._skip(name)
