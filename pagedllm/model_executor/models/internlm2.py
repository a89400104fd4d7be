"""InternLM2 / InternLM2.5: Llama under other checkpoint names, with q/k/v fused in one `wqkv`
whose rows are per KV group [kv_heads, queries per group + 2, head_dim] (the group's queries,
then its key and value; Falcon's new layout), reordered at load into our q | k | v. `bias`
puts a bias on wqkv and wo. The block is Llama's, so it runs on the fused CPU stack.

transformers ships no InternLM2 (its config class is the checkpoint's remote code); the config
loads as a plain PretrainedConfig (model_loader/config.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.models.falcon import grouped_to_qkv
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    head_dim_of,
)

_RENAMES = [
    (re.compile(r"^model\.tok_embeddings\."), "model.embed_tokens."),
    (re.compile(r"^output\."), "lm_head."),
    (re.compile(r"\.attention\.wqkv\."), ".self_attn.qkv_proj."),
    (re.compile(r"\.attention\.wo\."), ".self_attn.o_proj."),
    (re.compile(r"\.feed_forward\.w1\."), ".mlp.gate_proj."),
    (re.compile(r"\.feed_forward\.w3\."), ".mlp.up_proj."),
    (re.compile(r"\.feed_forward\.w2\."), ".mlp.down_proj."),
    (re.compile(r"\.attention_norm\."), ".input_layernorm."),
    (re.compile(r"\.ffn_norm\."), ".post_attention_layernorm."),
]
"""InternLM2 checkpoint names -> the HF Llama names our loader maps."""


class InternLM2DecoderLayer(LlamaDecoderLayer):
    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        bias = bool(getattr(config, "bias", False))
        return LlamaAttention(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias)

    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> LlamaMLP:
        # (no MLP bias in InternLM2: `bias` is the attention's)
        return LlamaMLP(config.hidden_size, config.intermediate_size, config.hidden_act, False,
                        prefix)  # fmt: skip


class InternLM2Model(LlamaModel):
    decoder_layer_cls = InternLM2DecoderLayer


class InternLM2ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping = {"gate_up_proj": ["gate_proj", "up_proj"]}
    """(wqkv loads whole into qkv_proj once reordered; w1 / w3 are gate / up)"""
    model_cls = InternLM2Model

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return super().load_weights(self._to_llama(weights))

    def _to_llama(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        config = self.config
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        for name, tensor in weights:
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
            if ".self_attn.qkv_proj." in name:
                tensor = grouped_to_qkv(tensor, num_kv_heads, head_dim_of(config))
            yield name, tensor
