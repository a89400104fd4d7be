"""Batched paged attention on top of PyTorch's fused SDPA, for any device and dtype (the CPU's
fallback where the compiled kernel does not apply, and CUDA's default until a dedicated backend).

Per step, the metadata builder splits the batch once (not per layer) into
  * decodes (one query token each): one batched SDPA over their gathered blocks, keys past each
    request's length masked out;
  * prefill chunks (several query tokens): one SDPA each with a causal mask offset by the
    request's cached length (few per step: the token budget bounds them).
Tested against the reference backend (torch_ref).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from pagedllm.attention.backends.torch_ref import TorchRefAttentionImpl
from pagedllm.attention.ops.cache_write import write_to_paged_cache
from pagedllm.attention.ops.kv_quant import load_kv
from pagedllm.utils.math import cdiv


@dataclass
class PrefillChunk:
    token_start: int
    token_end: int
    seq_len: int
    block_ids: torch.Tensor  # [num_blocks] long
    key_positions: torch.Tensor  # [seq_len] long
    query_positions: torch.Tensor  # [num_query, 1] long


@dataclass
class TorchSdpaMetadata:
    common: CommonAttentionMetadata
    decode_token_rows: torch.Tensor  # [Bd] long: row of each decode's token in q
    decode_block_table: torch.Tensor  # [Bd, max_blocks] long
    decode_seq_lens: torch.Tensor  # [Bd] long
    decode_key_positions: torch.Tensor  # [S] long, S = max_blocks * block_size
    prefills: list[PrefillChunk]

    @property
    def num_decodes(self) -> int:
        return int(self.decode_token_rows.shape[0])


class TorchSdpaMetadataBuilder(AttentionMetadataBuilder):
    def build(self, common: CommonAttentionMetadata) -> TorchSdpaMetadata:
        qsl, seq_lens = common.query_start_loc_cpu, common.seq_lens_cpu
        device = common.block_table.device
        decode_idx = [i for i in range(common.num_reqs) if qsl[i + 1] - qsl[i] == 1]
        prefills = [
            self._prefill_chunk(common, i)
            for i in range(common.num_reqs)
            if qsl[i + 1] - qsl[i] > 1
        ]
        max_blocks = max((cdiv(seq_lens[i], common.block_size) for i in decode_idx), default=0)
        idx = torch.tensor(decode_idx, dtype=torch.long, device=device)
        return TorchSdpaMetadata(
            common=common,
            decode_token_rows=torch.tensor([qsl[i] for i in decode_idx], dtype=torch.long,
                                           device=device),
            decode_block_table=common.block_table[idx, :max_blocks].long(),
            decode_seq_lens=common.seq_lens[idx].long(),
            decode_key_positions=torch.arange(max_blocks * common.block_size, device=device),
            prefills=prefills,
        )

    @staticmethod
    def _prefill_chunk(common: CommonAttentionMetadata, i: int) -> PrefillChunk:
        start, end = common.query_start_loc_cpu[i], common.query_start_loc_cpu[i + 1]
        seq_len = common.seq_lens_cpu[i]
        device = common.block_table.device
        num_blocks = cdiv(seq_len, common.block_size)
        return PrefillChunk(
            token_start=start,
            token_end=end,
            seq_len=seq_len,
            block_ids=common.block_table[i, :num_blocks].long(),
            key_positions=torch.arange(seq_len, device=device),
            query_positions=torch.arange(seq_len - (end - start), seq_len, device=device)[:, None],
        )


class TorchSdpaAttentionImpl(AttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # SDPA cannot soft-cap scores: layers that need it take the reference path.
        self._reference = (
            TorchRefAttentionImpl(*args, **kwargs) if self.logits_soft_cap is not None else None
        )

    def forward(self, query, key, value, kv_cache, attn_metadata):
        md: TorchSdpaMetadata = attn_metadata
        if self._reference is not None:
            return self._reference.forward(query, key, value, kv_cache, md.common)
        write_to_paged_cache(key, value, kv_cache, md.common.slot_mapping)
        out = torch.empty_like(query)
        if md.num_decodes:
            out[md.decode_token_rows] = self._decode(query[md.decode_token_rows], kv_cache, md)
        for chunk in md.prefills:
            q = query[chunk.token_start : chunk.token_end]
            out[chunk.token_start : chunk.token_end] = self._prefill(q, kv_cache, chunk)
        return out

    def _gather(self, kv_cache: torch.Tensor, block_ids: torch.Tensor, dtype: torch.dtype):
        # [..., num_blocks] -> K, V: [..., Hkv, num_blocks * block_size, D]
        k = kv_cache[0][block_ids].flatten(-4, -3).transpose(-3, -2)
        v = kv_cache[1][block_ids].flatten(-4, -3).transpose(-3, -2)
        return load_kv(k, dtype), load_kv(v, dtype)

    def _decode(self, q, kv_cache, md: TorchSdpaMetadata):
        # q: [Bd, H, D] -> [Bd, H, 1, D]
        k, v = self._gather(kv_cache, md.decode_block_table, q.dtype)
        key_pos = md.decode_key_positions[None, :]
        seq_lens = md.decode_seq_lens[:, None]
        allowed = key_pos < seq_lens  # [Bd, S]
        if self.sliding_window is not None:
            allowed &= key_pos >= seq_lens - self.sliding_window
        out = self._sdpa(q[:, :, None, :], k, v, allowed[:, None, None, :])
        return out[:, :, 0, :]

    def _prefill(self, q, kv_cache, chunk: PrefillChunk):
        # q: [nq, H, D] -> [1, H, nq, D]; keys [1, Hkv, L, D]
        k, v = self._gather(kv_cache, chunk.block_ids, q.dtype)
        k, v = k[:, : chunk.seq_len], v[:, : chunk.seq_len]
        allowed = chunk.key_positions[None, :] <= chunk.query_positions  # [nq, L]
        if self.sliding_window is not None:
            allowed &= chunk.key_positions[None, :] > chunk.query_positions - self.sliding_window
        out = self._sdpa(q.transpose(0, 1)[None], k[None], v[None], allowed[None, None])
        return out[0].transpose(0, 1)

    def _sdpa(self, q, k, v, mask):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )


class TorchSdpaBackend(AttentionBackend):
    name = "torch_sdpa"

    @staticmethod
    def get_builder_cls():
        return TorchSdpaMetadataBuilder

    @staticmethod
    def get_impl_cls():
        return TorchSdpaAttentionImpl
