"""DBRX: a Llama-shaped decoder (GQA attention with rotary, fused Wqkv whose outputs are clamped
to +-clip_qkv, LayerNorms without bias) whose every MLP is a mixture of experts: softmax router,
top moe_top_k, the k weights divided by their p-norm (moe_normalize_expert_weights; None: kept
as they are), SwiGLU experts stored fused per layer as w1 (gate) / v1 (up) / w2 (down, stored
transposed), each [num_experts * ffn_hidden_size, d_model].

The blocks are Llama's (models/llama.py) and the experts FusedMoE's stacked layout; the
checkpoint's transformer.blocks.* names and fused expert matrices are mapped onto them at load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.layernorm import LayerNormNoBias
from pagedllm.model_executor.layers.linear import ReplicatedLinear
from pagedllm.model_executor.layers.moe import ExpertWeightMapper, FusedMoE
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.layers.weight_utils import load_packed_weights
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)

LAYER_NORM_EPS = 1e-5
"""DBRX's LayerNorms are torch's default (the config has no eps)."""


class DbrxAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int,
                 prefix: str) -> None:
        super().__init__(config, rotary_emb, layer_idx, prefix)
        self.clip_qkv = config.attn_config.clip_qkv

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)  # [T, (H + 2 Hkv) * D]
        if self.clip_qkv is not None:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


class DbrxExperts(nn.Module):
    """Router + experts; held as the layer's `mlp` (the checkpoint's `ffn`)."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        ffn = config.ffn_config
        self.top_k = ffn.moe_top_k
        self.norm_p = ffn.moe_normalize_expert_weights
        # the router (checkpoint: ffn.router.layer): replicated, never quantized
        self.gate = ReplicatedLinear(config.d_model, ffn.moe_num_experts, prefix=f"{prefix}.gate")
        act = (ffn.ffn_act_fn or {}).get("name", "silu")
        self.experts = FusedMoE(ffn.moe_num_experts, self.top_k, config.d_model,
                                ffn.ffn_hidden_size, act, renormalize=False,
                                prefix=f"{prefix}.experts")  # fmt: skip

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        probs = torch.softmax(self.gate(hidden_states).float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_p is not None:
            weights = weights / torch.norm(weights, p=self.norm_p, dim=-1, keepdim=True)
        return self.experts.forward_routed(hidden_states, weights, ids)


class DbrxDecoderLayer(LlamaDecoderLayer):
    norm_cls = LayerNormNoBias

    def build_attention(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int,
                        prefix: str) -> LlamaAttention:
        return DbrxAttention(config, rotary_emb, layer_idx, prefix)

    def build_mlp(self, config: Any, layer_idx: int, prefix: str) -> nn.Module:
        return DbrxExperts(config, prefix)


class DbrxModel(LlamaModel):
    decoder_layer_cls = DbrxDecoderLayer
    norm_cls = LayerNormNoBias


class _LlamaView:
    """DbrxConfig as the Llama blocks read it (DBRX names no norm eps)."""

    layer_norm_eps = LAYER_NORM_EPS

    def __init__(self, config: Any) -> None:
        self._config = config

    def __getattr__(self, name: str) -> Any:
        if name == "_config":  # (a copy or unpickle looks before __init__ set it)
            raise AttributeError(name)
        return getattr(self._config, name)


_RENAMES = [
    (r"^transformer\.wte\.", "model.embed_tokens."),
    (r"^transformer\.norm_f\.", "model.norm."),
    (r"^transformer\.blocks\.(\d+)\.norm_attn_norm\.norm_1\.", r"model.layers.\1.input_layernorm."),
    (r"^transformer\.blocks\.(\d+)\.norm_attn_norm\.norm_2\.",
     r"model.layers.\1.post_attention_layernorm."),
    (r"^transformer\.blocks\.(\d+)\.norm_attn_norm\.attn\.Wqkv\.",
     r"model.layers.\1.self_attn.qkv_proj."),
    (r"^transformer\.blocks\.(\d+)\.norm_attn_norm\.attn\.out_proj\.",
     r"model.layers.\1.self_attn.o_proj."),
    (r"^transformer\.blocks\.(\d+)\.ffn\.router\.layer\.", r"model.layers.\1.mlp.gate."),
]
_EXPERTS = re.compile(r"^transformer\.blocks\.(\d+)\.ffn\.experts\.mlp\.(w1|v1|w2)$")
_GGUF_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(w1|v1|w2)\.weight$")
"""A llama.cpp GGUF's experts (model_loader/gguf.py): stacked [E, I, H], w2 already [E, H, I]."""


class DbrxForCausalLM(LlamaForCausalLM):
    # (-tp: the whole fused Wqkv is cut per q/k/v shard by QKVParallelLinear's loader; clip_qkv
    # is elementwise. -pp: Llama's stages.)
    model_cls = DbrxModel

    def __init__(self, model_config: Any) -> None:
        from dataclasses import replace

        super().__init__(replace(model_config, hf_config=_LlamaView(model_config.hf_config)))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        ffn = self.config.ffn_config
        experts = ExpertWeightMapper(ffn.moe_num_experts, gate="w1", up="v1", down="w2")
        return load_packed_weights(self, self._ours(weights), {}, self._skip,
                                   name_mappers=[experts])  # fmt: skip

    def _ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """Checkpoint names onto the Llama blocks; each fused expert matrix [E * I, H] split
        into per-expert ones (w2 transposed to the [H, I] of a down projection)."""
        ffn = self.config.ffn_config
        for name, tensor in weights:
            if (gguf_match := _GGUF_EXPERTS.match(name)) is not None:
                layer, which = gguf_match[1], gguf_match[2]
                for e, matrix in enumerate(_dense(tensor)):
                    yield f"model.layers.{layer}.mlp.experts.{e}.{which}.weight", matrix
                continue
            match = _EXPERTS.match(name)
            if match is None:
                for pattern, repl in _RENAMES:
                    name = re.sub(pattern, repl, name)
                yield name, tensor
                continue
            layer, which = match[1], match[2]
            stacked = _dense(tensor).view(ffn.moe_num_experts, ffn.ffn_hidden_size, -1)
            for e in range(ffn.moe_num_experts):
                matrix = stacked[e].t() if which == "w2" else stacked[e]
                yield f"model.layers.{layer}.mlp.experts.{e}.{which}.weight", matrix


def _dense(tensor: Any) -> torch.Tensor:
    if hasattr(tensor, "dequantize") and not isinstance(tensor, torch.Tensor):  # GGUF blocks
        return tensor.dequantize()
    return tensor if isinstance(tensor, torch.Tensor) else torch.as_tensor(tensor)
