"""Paged attention with ALiBi biases (BLOOM, Falcon-RW): no position embedding; each head h adds
slope_h * (key position - query position) to its scores, a linear penalty on distance.

The K/V cache is the standard one ([2, num_blocks, block_size, num_kv_heads, head_size], any
cache dtype the backends store, int8/fp8 included); the layer writes it through the same op the
backends use and attends in PyTorch, one request at a time (float32 scores, as the reference
backend), reading the step's CommonAttentionMetadata from the forward context whatever backend
built it. The compiled CPU kernel has no bias input yet, so the selected backend's impl is unused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend, CommonAttentionMetadata
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.attention.ops.kv_quant import load_kv
from pagedllm.distributed import get_tensor_model_parallel_rank
from pagedllm.forward_context import get_forward_context
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.utils.math import cdiv


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """[num_heads] float32: the geometric slopes of the ALiBi paper (2^(-8/n) ... for the
    largest power of two n <= num_heads, the odd powers of the next one's base for the rest), as
    transformers' BLOOM computes them."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, num_heads - closest)
        extra = torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))
        slopes = torch.cat([slopes, extra])
    return slopes


class ALiBiAttention(Attention):
    """Attention (an entry of attention_layers(), bound to its K/V cache by the runner) whose
    scores carry per-head ALiBi biases."""

    def __init__(
        self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, prefix: str = ""
    ) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, prefix=prefix)
        # NOTE: [H] float32, not a buffer: a half model's cast must not round the slopes.
        # Tensor parallelism: the slopes of this rank's heads (a contiguous run of them).
        first = get_tensor_model_parallel_rank() * self.num_heads
        self.alibi_slopes = alibi_slopes(num_heads)[first : first + self.num_heads]

    def bind(self, backend: type[AttentionBackend], kv_cache: torch.Tensor) -> None:
        # NOTE: the backend's impl is not used (its kernels take no bias); its layout is the
        # standard K/V pair, which this layer reads and writes.
        assert kv_cache.dim() == 5 and kv_cache.shape[0] == 2, kv_cache.shape
        self.kv_cache = kv_cache

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads * head_size]
        key: torch.Tensor,  # [T, num_kv_heads * head_size]
        value: torch.Tensor,  # [T, num_kv_heads * head_size]
    ) -> torch.Tensor:  # [T, num_heads * head_size]
        assert self.kv_cache is not None, "attention layer not bound"
        metadata = get_forward_context().attn_metadata
        common: CommonAttentionMetadata = getattr(metadata, "common", metadata)
        num_tokens = query.shape[0]
        key = key.view(num_tokens, self.num_kv_heads, self.head_size)
        value = value.view(num_tokens, self.num_kv_heads, self.head_size)
        write_to_paged_cache(key, value, self.kv_cache, common.slot_mapping)
        query = query.view(num_tokens, self.num_heads, self.head_size)
        out = torch.empty_like(query)
        qsl = common.query_start_loc_cpu
        for i, seq_len in enumerate(common.seq_lens_cpu):
            start, end = qsl[i], qsl[i + 1]
            out[start:end] = self._attend_one(query[start:end], common, i, seq_len)
        return out.view(num_tokens, -1)

    def position_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[H, nq, seq_len] float32 added to the scaled scores: slope_h * (k - q), <= 0 where
        attended (softmax ignores a per-row constant, so this equals slope_h * k)."""
        slopes = self.alibi_slopes.to(q_pos.device)[:, None, None]
        return slopes * (k_pos - q_pos).float()

    def _attend_one(
        self, q: torch.Tensor, common: CommonAttentionMetadata, i: int, seq_len: int
    ) -> torch.Tensor:
        # q: [nq, H, D]; the request's keys and values: [seq_len, Hkv, D]
        num_query = q.shape[0]
        blocks = common.block_table[i, : cdiv(seq_len, common.block_size)].long()
        k = load_kv(self.kv_cache[0][blocks].flatten(0, 1)[:seq_len], torch.float32)
        v = load_kv(self.kv_cache[1][blocks].flatten(0, 1)[:seq_len], torch.float32)
        if self.num_kv_heads != self.num_heads:
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        q_pos = torch.arange(seq_len - num_query, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        scores = torch.einsum("qhd,khd->hqk", q.float(), k) * self.scale
        scores = scores + self.position_bias(q_pos, k_pos)  # [H, nq, seq_len]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
