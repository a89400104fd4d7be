"""Bamba (IBM): Mamba2 layers with a few rotary attention layers (attn_layer_indices), a dense
SwiGLU MLP in every layer; pre-norm blocks as Llama's. The Mamba2 mixers keep their states in
the per-request state cache (layers/mamba2.py); attention rotates half of each head
(partial_rotary_factor 0.5, which transformers' BambaConfig sets).

The model loop, the CausalLM wrapper and the loader are the hybrids' shared ones
(hybrid_common.py). -tp splits every layer; -pp is refused.
"""

from __future__ import annotations

from typing import Any

from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.mamba2 import Mamba2Mixer
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.models.hybrid_common import (
    HybridDecoderLayer,
    HybridDecoderModel,
    HybridForCausalLM,
)
from pagedllm.model_executor.models.llama import LlamaAttention, LlamaMLP, head_dim_of


def mamba2_mixer(config: Any, prefix: str) -> Mamba2Mixer:
    return Mamba2Mixer(
        config.hidden_size, int(config.mamba_expand * config.hidden_size), config.mamba_n_heads,
        config.mamba_d_head, config.mamba_n_groups, config.mamba_d_state, config.mamba_d_conv,
        config.mamba_conv_bias, config.mamba_proj_bias, config.rms_norm_eps,
        config.time_step_limit, prefix,
    )  # fmt: skip


class BambaDecoderLayer(HybridDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int,
                 prefix: str) -> None:
        super().__init__()
        self.is_mamba = config.layers_block_type[layer_idx] == "linear_attention"
        if self.is_mamba:
            self.mamba = mamba2_mixer(config, f"{prefix}.mamba")
        else:
            bias = config.attention_bias
            self.self_attn = LlamaAttention(config, rotary_emb, layer_idx, f"{prefix}.self_attn",
                                            qkv_bias=bias, o_bias=bias)
        self.feed_forward = LlamaMLP(config.hidden_size, config.intermediate_size,
                                     config.hidden_act, config.mlp_bias, f"{prefix}.feed_forward")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class BambaModel(HybridDecoderModel):
    def __init__(self, config: Any, max_position: int, prefix: str = "model") -> None:
        rotary_emb = RotaryEmbedding(head_dim_of(config), max_position, rope_parameters(config))
        super().__init__(config, lambda i, p: BambaDecoderLayer(config, rotary_emb, i, p),
                         prefix=prefix, norm_name="final_layernorm")


class BambaForCausalLM(HybridForCausalLM):
    model_cls = BambaModel
