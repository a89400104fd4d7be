"""Reference paged attention: a loop over requests, gather their blocks, masked SDPA.

Deliberately simple; it is the oracle every faster backend is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.attention.ops.kv_quant import load_kv
from pagedllm.utils.math import cdiv


class TorchRefMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> CommonAttentionMetadata:
        return common


class TorchRefAttentionImpl(AttentionImpl):
    def forward(self, query, key, value, kv_cache, attn_metadata):
        md: CommonAttentionMetadata = attn_metadata
        write_to_paged_cache(key, value, kv_cache, md.slot_mapping)
        out = torch.empty_like(query)
        qsl = md.query_start_loc_cpu
        for i, seq_len in enumerate(md.seq_lens_cpu):
            start, end = qsl[i], qsl[i + 1]
            out[start:end] = self._attend_one(query[start:end], kv_cache, md, i, seq_len)
        return out

    def _attend_one(self, q, kv_cache, md, i, seq_len):
        # q: [nq, H, D]; the request's keys: [seq_len, Hkv, D]
        num_query = q.shape[0]
        blocks = md.block_table[i, : cdiv(seq_len, md.block_size)].long()
        k = load_kv(kv_cache[0][blocks].flatten(0, 1)[:seq_len], q.dtype)
        v = load_kv(kv_cache[1][blocks].flatten(0, 1)[:seq_len], q.dtype)
        if self.num_kv_heads != self.num_heads:
            group = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        q_pos = torch.arange(seq_len - num_query, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        allowed = k_pos <= q_pos  # [nq, seq_len]
        if self.sliding_window is not None:
            allowed &= k_pos > q_pos - self.sliding_window
        # [H, nq, D] x [H, D, L] -> [H, nq, L]
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * self.scale
        if self.logits_soft_cap is not None:
            scores = torch.tanh(scores / self.logits_soft_cap) * self.logits_soft_cap
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


class TorchRefBackend(AttentionBackend):
    name = "torch_ref"

    @staticmethod
    def get_builder_cls():
        return TorchRefMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return TorchRefAttentionImpl
