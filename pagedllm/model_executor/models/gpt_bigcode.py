"""GPT-BigCode (SantaCoder, StarCoder 1): GPT-2's block with multi-query attention (one K/V
head shared by every query head when `multi_query`: c_attn rows q | k | v; without it the rows
are per head [heads, 3, head_dim], as GPT-NeoX's, reordered at load) and nn.Linear weights
stored [out, in] (not GPT-2's transposed Conv1D). Runs eagerly, like GPT-2."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedllm.model_executor.layers.attention import Attention
from pagedllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.model_executor.layers.weight_utils import take_rows
from pagedllm.model_executor.models.gpt2 import GPT2Block, GPT2LMHeadModel, GPT2Model
from pagedllm.model_executor.models.gpt_neox import _per_head_to_qkv


class GPTBigCodeAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, prefix: str) -> None:
        super().__init__()
        hidden, num_heads = config.hidden_size, config.num_attention_heads
        num_kv_heads = 1 if config.multi_query else num_heads
        head_dim = hidden // num_heads
        self.c_attn = QKVParallelLinear(
            hidden, head_dim, num_heads, num_kv_heads, bias=True, prefix=f"{prefix}.c_attn"
        )
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True, prefix=f"{prefix}.c_proj")
        # this rank's q | k | v columns (the one MQA K/V head replicated over the ranks)
        self.split_sizes = list(self.c_attn.output_sizes_per_partition)
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.attn = Attention(num_heads, head_dim, scale, num_kv_heads, prefix=f"{prefix}.attn")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        q, k, v = self.c_attn(hidden_states).split(self.split_sizes, dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPTBigCodeBlock(GPT2Block):
    attn_cls = GPTBigCodeAttention


class GPTBigCodeModel(GPT2Model):
    block_cls = GPTBigCodeBlock


class GPTBigCodeForCausalLM(GPT2LMHeadModel):
    conv1d_modules = ()  # nn.Linear weights, [out, in] as ours
    model_cls = GPTBigCodeModel

    def _hf_to_ours(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        for name, tensor in super()._hf_to_ours(weights):
            if not self.config.multi_query and ".attn.c_attn." in name:  # (by row index)
                rows = torch.arange(tensor.shape[0])
                tensor = take_rows(tensor, _per_head_to_qkv(rows, self.config.num_attention_heads))
            yield name, tensor
