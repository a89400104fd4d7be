"""OLMo 2: Llama's attention and MLP in a post-norm block, x + norm(attn(x)) then
x + norm(mlp(x)) (no norm on the sub-block inputs), with q and k each RMS-normed over the whole
projection (all heads together, before rotary) rather than per head.

Its block is not one the fused CPU stack computes, so it runs eagerly (the worker logs why).
Under tensor parallelism a rank holds only its heads' q/k columns, so their norm sums the
squares over the ranks (one small all-reduce each for q and k) before scaling its own columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from pagedllm.distributed.utils import head_range
from pagedllm.model_executor.layers.layernorm import RMSNorm
from pagedllm.model_executor.layers.rotary import RotaryEmbedding
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs
from pagedllm.model_executor.models.llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)


class Olmo2Attention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        bias = getattr(config, "attention_bias", False)
        super().__init__(config, rotary_emb, layer_idx, prefix, qkv_bias=bias, o_bias=bias)
        num_heads = config.num_attention_heads
        num_kv_heads = config.num_key_value_heads or num_heads
        eps = config.rms_norm_eps
        if get_tensor_model_parallel_world_size() > 1:
            self.q_norm = HeadShardedRMSNorm(num_heads, self.head_dim, eps)
            self.k_norm = HeadShardedRMSNorm(num_kv_heads, self.head_dim, eps)
        else:  # over [T, H * D], not per head
            self.q_norm = RMSNorm(num_heads * self.head_dim, eps)
            self.k_norm = RMSNorm(num_kv_heads * self.head_dim, eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.split_sizes, dim=-1)
        # NOTE: contiguous copies: the norms' kernel reads whole rows (q, k are views of qkv)
        (q, _), (k, _) = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q, k = self.rotary_emb(positions, q, k)  # [T, H*D], [T, Hkv*D]
        return self.o_proj(self.attn(q, k, v))


class HeadShardedRMSNorm(nn.Module):
    """RMSNorm over all heads' columns [T, H * D] when this tensor-parallel rank holds only its
    heads' columns: the sum of squares is all-reduced over the ranks, then each rank scales its
    columns by its slice of the weight."""

    def __init__(self, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if num_heads < tp:
            # (ranks sharing a replicated head would count its squares more than once)
            raise ValueError(f"OLMo 2's q/k norm spans all heads: {num_heads} heads cannot be "
                             f"split over tensor_parallel_size={tp}")
        start, end = head_range(num_heads, tp, get_tensor_model_parallel_rank())
        self.eps = eps
        self.full_size = num_heads * head_dim
        self.columns = (start * head_dim, end * head_dim)
        self.weight = nn.Parameter(torch.empty((end - start) * head_dim), requires_grad=False)
        set_weight_attrs(self.weight, weight_loader=self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        default_weight_loader(param, loaded[self.columns[0] : self.columns[1]])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:  # [T, local H * D]
        squares = tensor_model_parallel_all_reduce(x.float().pow(2).sum(-1, keepdim=True))
        normed = x.float() * torch.rsqrt(squares / self.full_size + self.eps)
        return (self.weight * normed).to(x.dtype), None


class Olmo2DecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str):
        super().__init__(config, rotary_emb, layer_idx, prefix)
        del self.input_layernorm  # OLMo 2 norms the sub-block outputs only
        self.post_feedforward_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)

    def build_attention(
        self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int, prefix: str
    ) -> LlamaAttention:
        return Olmo2Attention(config, rotary_emb, layer_idx, prefix)

    def forward(
        self,
        positions: torch.Tensor,  # [T]
        hidden_states: torch.Tensor,  # [T, hidden]
        residual: torch.Tensor | None,  # [T, hidden]; None before the first layer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the stream so far is hidden_states + residual; return (this layer's MLP part, the rest)
        stream = hidden_states if residual is None else hidden_states + residual
        attn_out, _ = self.post_attention_layernorm(self.self_attn(positions, stream))
        stream = stream + attn_out
        mlp_out, _ = self.post_feedforward_layernorm(self.mlp(stream))
        return mlp_out, stream


class Olmo2Model(LlamaModel):
    decoder_layer_cls = Olmo2DecoderLayer


class Olmo2ForCausalLM(LlamaForCausalLM):
    supports_tensor_parallel = True  # (q/k norms: HeadShardedRMSNorm)
    model_cls = Olmo2Model
