"""Fused execution of Llama-style decoder layers: one call into the compiled kernel per step for
all layers (kernels/csrc/decoder_layer.cpp) instead of ~30 module calls per layer.

It runs the same operators in the same order as the eager modules (bit-identical results) and
applies only where the layer is exactly the plain Llama shape: RMSNorm pre-norms, q/k/v with
optional bias, rotary (any frequency variant: the cos/sin cache is the layer's own), no q/k
norm, paged attention on the compiled backend, o_proj, SwiGLU MLP without bias, float32, linear
weights dense or in the compiled quantized layout. Llama, Mistral, Qwen2, SmolLM qualify; other
families (Gemma's norms, MoE, Qwen3's q/k norm) run eagerly. `enforce_eager` turns it off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.attention.backend import CommonAttentionMetadata
from pagedllm.kernels import fits_cpu_float32, fits_cpu_kv_cache
from pagedllm.model_executor.layers.activation import SiluAndMul
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import UnquantizedLinearMethod
from pagedllm.model_executor.layers.rotary import RotaryEmbedding


class FusedDecoderStack:
    """Every layer's static kernel arguments, handed to the compiled LlamaDecoderStack once; a
    step is then one call for all layers (per-layer calls from Python cost ~25 argument
    conversions each)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.stack = torch.classes.pagedllm.LlamaDecoderStack()
        for layer in layers:
            self.stack.add_layer(*_layer_arguments(layer))

    def __call__(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        md: CommonAttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stack.forward(hidden, residual, positions, md.slot_mapping, md.block_table,
                                  md.seq_lens, md.query_start_loc)  # fmt: skip


def _layer_arguments(layer: nn.Module) -> tuple:
    """LlamaDecoderStack.add_layer's arguments for one layer."""
    attn_mod = layer.self_attn
    attn = attn_mod.attn
    linears = [attn_mod.qkv_proj, attn_mod.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj]
    weights, meta = [], []
    for linear in linears:
        tensors, group, u4 = _linear_tensors(linear)
        weights.append(tensors)
        meta += [group, int(u4)]
    return (
        layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
        layer.input_layernorm.eps, *weights, meta, attn_mod.qkv_proj.bias, attn_mod.o_proj.bias,
        attn_mod.rotary_emb.cos_sin_cache, attn.num_heads, attn.num_kv_heads, attn.head_size,
        attn_mod.rotary_emb.rotary_dim, attn.kv_cache, attn.scale, attn.sliding_window or 0,
        attn.logits_soft_cap or 0.0,
    )  # fmt: skip


def _linear_tensors(linear: nn.Module) -> tuple[list[torch.Tensor], int, bool]:
    kernel = getattr(linear, "qweight_kernel", None)
    if kernel is None:
        return [linear.weight], 0, False
    return [kernel.codes, kernel.scales, kernel.mins], kernel.group_size, kernel.u4


def build_fused_layers(layers: nn.ModuleList) -> FusedDecoderStack | None:
    """The fused form of all layers, or None if any layer does not qualify (see module doc)."""
    if not all(_qualifies(layer) for layer in layers):
        return None
    return FusedDecoderStack(layers)


def _qualifies(layer: nn.Module) -> bool:
    from pagedllm.attention.backends.cpu_paged import CpuPagedAttentionImpl
    from pagedllm.model_executor.models.llama import (
        LlamaAttention,
        LlamaDecoderLayer,
        LlamaMLP,
    )

    if type(layer).forward is not LlamaDecoderLayer.forward:
        return False
    attn_mod, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if type(attn_mod) is not LlamaAttention or type(mlp) is not LlamaMLP:
        return False
    norms_plain = all(type(n) is RMSNorm for n in (layer.input_layernorm,
                                                   layer.post_attention_layernorm))  # fmt: skip
    attn = attn_mod.attn
    return (
        norms_plain
        and attn_mod.q_norm is None
        and type(attn_mod.rotary_emb) is RotaryEmbedding
        and isinstance(mlp.act_fn, SiluAndMul)
        and mlp.gate_up_proj.bias is None
        and mlp.down_proj.bias is None
        and isinstance(attn.impl, CpuPagedAttentionImpl)
        and attn.kv_cache is not None
        and fits_cpu_kv_cache(attn.kv_cache)
        and fits_cpu_float32(layer.input_layernorm.weight)
        and all(_linear_fits(m) for m in (attn_mod.qkv_proj, attn_mod.o_proj,
                                          mlp.gate_up_proj, mlp.down_proj))  # fmt: skip
    )


def _linear_fits(linear: Any) -> bool:
    from pagedllm.model_executor.quantization.kernels import PackedGroupWeight

    kernel = getattr(linear, "qweight_kernel", None)
    if kernel is not None:
        return type(kernel) is PackedGroupWeight and kernel.input_perm is None
    return isinstance(getattr(linear, "quant_method", None), UnquantizedLinearMethod) and (
        fits_cpu_float32(linear.weight)
    )
