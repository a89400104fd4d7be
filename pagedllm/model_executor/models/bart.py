"""BART: a post-norm Transformer encoder-decoder with learned absolute positions (offset 2, as
OPT), a LayerNorm over the embeddings of each stack, and the LM head tied to the shared token
embedding plus a final_logits_bias.

The encoder runs once per request (worker/encoder_decoder.py calls `encode`, then `cross_kv`
for each decoder layer's cross-attention K/V); `forward` is the decoder over the step's packed
tokens, its self-attention in the paged KV cache, its cross-attention over the kept K/V.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.distributed import divide, get_tensor_model_parallel_world_size
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.cross_attention import (
    CrossAttentionBatch,
    CrossKV,
    cross_attend,
)
from pagedllm.model_executor.layers.embedding import VocabParallelEmbedding
from pagedllm.model_executor.layers.encoder_attention import EncoderAttention
from pagedllm.model_executor.layers.layernorm import LayerNorm
from pagedllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, load_packed_weights

POSITION_OFFSET = 2
"""BART's position embedding row of position p is p + 2 (as OPT's)."""


def _column(n_in: int, n_out: int, prefix: str) -> ColumnParallelLinear:
    return ColumnParallelLinear(n_in, n_out, bias=True, prefix=prefix)


def _row(n_in: int, n_out: int, prefix: str) -> RowParallelLinear:
    return RowParallelLinear(n_in, n_out, bias=True, prefix=prefix)


class BartAttention(nn.Module):
    """q/k/v/out projections with biases; `attn` is the encoder's (bidirectional, no cache) or
    the decoder's (causal, paged); the cross-attention variant uses only q_proj/out_proj per
    step, its k_proj/v_proj once per request (`kv`)."""

    def __init__(self, hidden: int, num_heads: int, prefix: str, kind: str) -> None:
        super().__init__()
        # NOTE: this rank's heads (q/k/v are split by heads, out_proj all-reduces their sum)
        self.num_heads = divide(num_heads, get_tensor_model_parallel_world_size())
        self.head_dim = hidden // num_heads
        self.scale = self.head_dim**-0.5
        # vLLM's roles (the same matmul at tp_size 1): q/k/v column-parallel (kept apart: a
        # cross-attention runs k/v once per request), out_proj row-parallel
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, _column(hidden, hidden, f"{prefix}.{name}"))
        self.out_proj = _row(hidden, hidden, f"{prefix}.out_proj")
        self.attn: nn.Module | None = None
        if kind == "encoder":
            self.attn = EncoderAttention(self.num_heads, self.head_dim, self.scale)
        elif kind == "decoder":  # (Attention takes the model's heads and keeps its share)
            self.attn = Attention(num_heads, self.head_dim, self.scale, num_heads,
                                  prefix=f"{prefix}.attn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        return self.out_proj(self.attn(self.q_proj(x), self.k_proj(x), self.v_proj(x)))

    def kv(self, encoder_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[S, hidden] -> K, V [S, H, D] for cross-attention."""
        shape = (encoder_out.shape[0], self.num_heads, self.head_dim)
        return self.k_proj(encoder_out).view(shape), self.v_proj(encoder_out).view(shape)

    def cross(self, x: torch.Tensor, cross: CrossAttentionBatch, layer: int) -> torch.Tensor:
        q = self.q_proj(x)
        return self.out_proj(cross_attend(q, cross, layer, self.num_heads, self.scale))


class BartFFN(nn.Module):
    def __init__(self, config: Any, hidden: int, ffn_dim: int, prefix: str) -> None:
        super().__init__()
        self.fc1 = _column(hidden, ffn_dim, f"{prefix}.fc1")
        self.activation_fn = get_act_fn(config.activation_function)
        self.fc2 = _row(ffn_dim, hidden, f"{prefix}.fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class BartEncoderLayer(nn.Module):
    """Post-norm: ln(x + attn(x)), then ln(. + ffn(.))."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = BartAttention(d, config.encoder_attention_heads,
                                       f"{prefix}.self_attn", "encoder")
        self.self_attn_layer_norm = LayerNorm(d)
        self.ffn = BartFFN(config, d, config.encoder_ffn_dim, f"{prefix}.ffn")
        self.final_layer_norm = LayerNorm(d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_layer_norm.norm(h + self.self_attn(h))
        return self.final_layer_norm.norm(h + self.ffn(h))


class BartDecoderLayer(nn.Module):
    """Post-norm: self-attention (causal, paged), cross-attention, FFN; each ln(x + f(x))."""

    def __init__(self, config: Any, prefix: str, index: int) -> None:
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.index = index
        self.self_attn = BartAttention(d, heads, f"{prefix}.self_attn", "decoder")
        self.self_attn_layer_norm = LayerNorm(d)
        self.encoder_attn = BartAttention(d, heads, f"{prefix}.encoder_attn", "cross")
        self.encoder_attn_layer_norm = LayerNorm(d)
        self.ffn = BartFFN(config, d, config.decoder_ffn_dim, f"{prefix}.ffn")
        self.final_layer_norm = LayerNorm(d)

    def forward(self, h: torch.Tensor, cross: CrossAttentionBatch) -> torch.Tensor:
        h = self.self_attn_layer_norm.norm(h + self.self_attn(h))
        h = self.encoder_attn_layer_norm.norm(h + self.encoder_attn.cross(h, cross, self.index))
        return self.final_layer_norm.norm(h + self.ffn(h))


class BartStack(nn.Module):
    """The encoder's or the decoder's embeddings and layers (token embedding shared)."""

    def __init__(self, config: Any, shared: VocabParallelEmbedding, prefix: str,
                 decoder: bool) -> None:
        super().__init__()
        d = config.d_model
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self._shared = [shared]  # not a submodule: its weight is model.shared's
        self.embed_positions = VocabParallelEmbedding(
            config.max_position_embeddings + POSITION_OFFSET, d,
            prefix=f"{prefix}.embed_positions")
        self.layernorm_embedding = LayerNorm(d)
        if decoder:
            self.layers = nn.ModuleList(BartDecoderLayer(config, f"{prefix}.layers.{i}", i)
                                        for i in range(config.decoder_layers))
        else:
            self.layers = nn.ModuleList(BartEncoderLayer(config, f"{prefix}.layers.{i}")
                                        for i in range(config.encoder_layers))

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self._shared[0](input_ids) * self.embed_scale
        h = h + self.embed_positions(positions + POSITION_OFFSET)
        return self.layernorm_embedding.norm(h)  # [T, d_model]


class BartForConditionalGeneration(nn.Module):
    is_encoder_decoder = True
    supports_tensor_parallel = True
    """Both stacks split by heads and FFN columns; each rank keeps its heads' cross K/V."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        # prefixes are our module names (the checkpoint's model.* are mapped onto them at load)
        self.shared = VocabParallelEmbedding(config.vocab_size, config.d_model, prefix="shared")
        self.encoder = BartStack(config, self.shared, "encoder", decoder=False)
        self.decoder = BartStack(config, self.shared, "decoder", decoder=True)
        self.final_logits = nn.Module()  # holds the checkpoint's top-level final_logits_bias
        self.final_logits.bias = nn.Parameter(torch.zeros(1, config.vocab_size),
                                              requires_grad=False)
        self.final_logits.bias.weight_loader = default_weight_loader  # type: ignore[attr-defined]
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def encode(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The step's packed encoder prompts [S] -> encoder output [S, d_model] (under an
        EncoderAttentionMetadata forward context)."""
        h = self.encoder.embed(input_ids, positions)
        for layer in self.encoder.layers:
            h = layer(h)
        return h

    def cross_kv(self, encoder_out: torch.Tensor) -> CrossKV:
        """One request's encoder output [S, d_model] -> each decoder layer's cross K/V."""
        return [layer.encoder_attn.kv(encoder_out) for layer in self.decoder.layers]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                cross: CrossAttentionBatch) -> torch.Tensor:  # [T] -> [T, d_model]
        h = self.decoder.embed(input_ids, positions)
        for layer in self.decoder.layers:
            h = layer(h, cross)
        return h

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[N, d_model] -> [N, vocab] float32 (the tied head plus final_logits_bias)."""
        logits = self.logits_processor(self.shared, hidden_states)
        return logits + self.final_logits.bias.float()

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_packed_weights(self, _our_names(weights), {}, _tied_copy)


def _tied_copy(name: str) -> bool:
    # the stacks' embed_tokens and lm_head are model.shared itself
    return name.endswith("embed_tokens.weight") or name.startswith("lm_head.")


def _our_names(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """model.shared -> shared, model.encoder.* -> encoder.*; the FFN's fc1/fc2 sit in `ffn`."""
    for name, tensor in weights:
        name = name.removeprefix("model.")
        if name == "final_logits_bias":
            name = "final_logits.bias"
        for fc in (".fc1.", ".fc2."):
            name = name.replace(fc, f".ffn{fc}")
        yield name, tensor
