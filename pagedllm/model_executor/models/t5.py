"""T5 (and T5 v1.1 / Flan-T5): a pre-norm Transformer encoder-decoder without position
embeddings; attention scores carry a learned relative-position bias (bucketed distance, one
table per stack, held by its first block and shared by all its blocks), are not scaled by
1/sqrt(d), and the norms are T5's RMS LayerNorm (no mean, no bias). Heads are d_kv wide, apart
from d_model.

The encoder runs once per request (`encode` over the packed prompts, then `cross_kv`); the
decoder's self-attention is paged (`T5PagedAttention`: the ALiBi layer's PyTorch attention with
T5's bias in place of the slopes), its cross-attention reads the kept K/V.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.distributed import (
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from pagedllm.forward_context import get_forward_context
from pagedllm.model_executor.layers.activation import get_act_fn
from pagedllm.model_executor.layers.alibi_attention import ALiBiAttention
from pagedllm.model_executor.layers.cross_attention import (
    CrossAttentionBatch,
    CrossKV,
    cross_attend,
)
from pagedllm.model_executor.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model_executor.layers.encoder_attention import EncoderAttentionMetadata
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import load_packed_weights


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Mesh TensorFlow's buckets of (key position - query position), as transformers' T5: half
    the buckets exact distances, the rest logarithmic up to max_distance; bidirectional splits
    them by sign, causal keeps only the past."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(relative.float() / max_exact)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(relative < max_exact, relative, large)


class T5RelativeBias(nn.Module):
    """[num_buckets, H] table -> the bias [H, nq, nk] of query/key positions."""

    def __init__(self, config: Any, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.weight = nn.Parameter(torch.empty(self.num_buckets, config.num_heads),
                                   requires_grad=False)
        # tensor parallelism: the table stays whole (replicated, num_buckets x heads values);
        # a rank biases only its own heads, a contiguous run of columns
        per_rank = divide(config.num_heads, get_tensor_model_parallel_world_size())
        start = get_tensor_model_parallel_rank() * per_rank
        self.heads = slice(start, start + per_rank)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        # q_pos [nq, 1], k_pos [1, nk]
        bucket = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets,
                                          self.max_distance)
        table = self.weight[:, self.heads]
        return F.embedding(bucket, table).permute(2, 0, 1).float()  # [H (this rank's), nq, nk]


class T5PagedAttention(ALiBiAttention):
    """The decoder's causal self-attention over the paged cache, T5's bias for the slopes."""

    def __init__(self, num_heads: int, head_dim: int, bias: list[T5RelativeBias],
                 prefix: str) -> None:
        super().__init__(num_heads, head_dim, 1.0, num_heads, prefix=prefix)
        self._bias = bias  # [the decoder's table] (a list: the table is block 0's parameter)

    def position_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self._bias[0](q_pos, k_pos)


class T5Attention(nn.Module):
    """q/k/v/o without biases, unscaled scores. The first block's self-attention holds its
    stack's relative_attention_bias."""

    def __init__(self, config: Any, prefix: str, has_bias: bool, bidirectional: bool) -> None:
        super().__init__()
        self.d_kv = config.d_kv
        inner = config.num_heads * self.d_kv
        # NOTE: this rank's heads (q/k/v split by heads, o all-reduces their sum)
        self.num_heads = divide(config.num_heads, get_tensor_model_parallel_world_size())
        # vLLM's roles (the same matmul at tp_size 1): q/k/v column-parallel, o row-parallel
        for name in ("q", "k", "v"):
            setattr(self, name, ColumnParallelLinear(config.d_model, inner,
                                                     prefix=f"{prefix}.{name}"))
        self.o = RowParallelLinear(inner, config.d_model, prefix=f"{prefix}.o")
        if has_bias:
            self.relative_attention_bias = T5RelativeBias(config, bidirectional)

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # [T, inner] -> [H, T, D]
        return x.view(x.shape[0], self.num_heads, self.d_kv).transpose(0, 1)

    def encoder_forward(self, x: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
        """Bidirectional within each packed prompt, one SDPA call per prompt on its own rows
        with its own [H, n, n] bias (T5Stack.encoder_biases): a prompt's bits do not depend on
        what was packed beside it (see layers/encoder_attention.py)."""
        metadata: EncoderAttentionMetadata = get_forward_context().attn_metadata
        q, k, v = (self.heads(p(x)) for p in (self.q, self.k, self.v))  # [H, T, D]
        out = torch.empty_like(q)
        for (start, end), bias in zip(metadata.spans, biases, strict=True):
            out[:, start:end] = F.scaled_dot_product_attention(
                q[:, start:end], k[:, start:end], v[:, start:end], attn_mask=bias.to(q.dtype),
                scale=1.0)
        return self.o(out.transpose(0, 1).reshape(x.shape[0], -1))

    def kv(self, encoder_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (encoder_out.shape[0], self.num_heads, self.d_kv)
        return self.k(encoder_out).view(shape), self.v(encoder_out).view(shape)

    def cross(self, x: torch.Tensor, cross: CrossAttentionBatch, layer: int) -> torch.Tensor:
        return self.o(cross_attend(self.q(x), cross, layer, self.num_heads, 1.0))


class T5DecoderSelfAttention(T5Attention):
    def __init__(self, config: Any, prefix: str, has_bias: bool,
                 bias: list[T5RelativeBias]) -> None:
        super().__init__(config, prefix, has_bias, bidirectional=False)
        self.attn = T5PagedAttention(config.num_heads, config.d_kv, bias, f"{prefix}.attn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.attn(self.q(x), self.k(x), self.v(x)))


class T5DenseReluDense(nn.Module):
    """wi -> act -> wo, or gated (v1.1): act(wi_0) * wi_1 -> wo."""

    def __init__(self, config: Any, prefix: str) -> None:
        super().__init__()
        d, ff = config.d_model, config.d_ff
        self.gated = config.is_gated_act
        names = ("wi_0", "wi_1") if self.gated else ("wi",)
        for name in names:
            setattr(self, name, ColumnParallelLinear(d, ff, prefix=f"{prefix}.{name}"))
        self.wo = RowParallelLinear(ff, d, prefix=f"{prefix}.wo")
        self.act = get_act_fn(config.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.act(self.wi(x)))


class T5SubLayer(nn.Module):
    """One of a block's `layer` entries: its RMS norm plus the attention or the FFN, named as
    in the checkpoint (SelfAttention, EncDecAttention, DenseReluDense)."""

    def __init__(self, config: Any, name: str, module: nn.Module) -> None:
        super().__init__()
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        setattr(self, name, module)
        self.body = name

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm.norm(x)


class T5Block(nn.Module):
    def __init__(self, config: Any, prefix: str, index: int, decoder: bool,
                 bias: list[T5RelativeBias]) -> None:
        super().__init__()
        self.index = index
        first = index == 0
        p = f"{prefix}.layer"
        if decoder:
            attn: nn.Module = T5DecoderSelfAttention(config, f"{p}.0.SelfAttention", first, bias)
        else:
            attn = T5Attention(config, f"{p}.0.SelfAttention", first, bidirectional=True)
        layers = [T5SubLayer(config, "SelfAttention", attn)]
        if decoder:
            layers.append(T5SubLayer(config, "EncDecAttention", T5Attention(
                config, f"{p}.1.EncDecAttention", False, bidirectional=False)))
        ff_index = len(layers)
        layers.append(T5SubLayer(config, "DenseReluDense",
                                 T5DenseReluDense(config, f"{p}.{ff_index}.DenseReluDense")))
        self.layer = nn.ModuleList(layers)

    def encoder_forward(self, h: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
        attn, ff = self.layer
        h = h + attn.SelfAttention.encoder_forward(attn.normed(h), biases)
        return h + ff.DenseReluDense(ff.normed(h))

    def decoder_forward(self, h: torch.Tensor, cross: CrossAttentionBatch) -> torch.Tensor:
        attn, xattn, ff = self.layer
        h = h + attn.SelfAttention(attn.normed(h))
        h = h + xattn.EncDecAttention.cross(xattn.normed(h), cross, self.index)
        return h + ff.DenseReluDense(ff.normed(h))


class T5Stack(nn.Module):
    def __init__(self, config: Any, prefix: str, decoder: bool) -> None:
        super().__init__()
        num = config.num_decoder_layers if decoder else config.num_layers
        self._bias: list[T5RelativeBias] = []  # filled below: block 0's table, for every block
        self.block = nn.ModuleList(T5Block(config, f"{prefix}.block.{i}", i, decoder, self._bias)
                                   for i in range(num))
        self._bias.append(self.block[0].layer[0].SelfAttention.relative_attention_bias)
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def encoder_biases(self, positions: torch.Tensor) -> list[torch.Tensor]:
        """Each packed prompt's bidirectional bias, [H, n, n], in the step's prompt order."""
        metadata: EncoderAttentionMetadata = get_forward_context().attn_metadata
        return [self._bias[0](positions[start:end, None], positions[None, start:end])
                for start, end in metadata.spans]


class T5ForConditionalGeneration(nn.Module):
    is_encoder_decoder = True
    supports_tensor_parallel = True
    """Both stacks split by heads (each rank biases its heads from the replicated relative
    position table) and FFN columns; each rank keeps its heads' cross K/V."""

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.shared = VocabParallelEmbedding(config.vocab_size, config.d_model, prefix="shared")
        self.encoder = T5Stack(config, "encoder", decoder=False)
        self.decoder = T5Stack(config, "decoder", decoder=True)
        # The original T5 ties the head and scales the decoder output by d_model^-0.5; v1.1
        # does neither (transformers keeps the choice in scale_decoder_outputs)
        tied = bool(getattr(config, "tie_word_embeddings", True))
        self.tie_word_embeddings = tied
        self.lm_head = (self.shared if tied else
                        ParallelLMHead(config.vocab_size, config.d_model, prefix="lm_head"))
        self.output_scale = (config.d_model**-0.5
                             if getattr(config, "scale_decoder_outputs", tied) else 1.0)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def encode(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.shared(input_ids)
        biases = self.encoder.encoder_biases(positions)
        for block in self.encoder.block:
            h = block.encoder_forward(h, biases)
        return self.encoder.final_layer_norm.norm(h)

    def cross_kv(self, encoder_out: torch.Tensor) -> CrossKV:
        return [block.layer[1].EncDecAttention.kv(encoder_out) for block in self.decoder.block]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                cross: CrossAttentionBatch) -> torch.Tensor:
        h = self.shared(input_ids)
        for block in self.decoder.block:
            h = block.decoder_forward(h, cross)
        return self.decoder.final_layer_norm.norm(h) * self.output_scale

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        # the stacks' embed_tokens are `shared`; so is a tied head (a checkpoint may repeat it)
        return load_packed_weights(self, weights, {}, lambda name: (
            name.endswith("embed_tokens.weight")
            or (self.tie_word_embeddings and name.startswith("lm_head."))))
