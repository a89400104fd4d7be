"""Multi-head latent attention (DeepSeek-V2/V3's MLA) over a paged cache of latents.

MLA's keys and values are up-projections of one compressed latent per token:
    c    = kv_a_layernorm(x W_DKV)                     [L]  (kv_lora_rank)
    k_pe = rope(x W_KR)                                [R]  (qk_rope_head_dim, shared by heads)
    k_h  = [c W_UK_h ; k_pe],  v_h = c W_UV_h          per head h
so the paged cache stores only [c ; k_pe], L + R values per token and layer, instead of
2 * H * head_dim. Attention never materializes k_h or v_h: with the up-projections absorbed
into the query and the output (as vLLM's MLA does),
    q_h . k_h = (q_nope_h W_UK_h^T) . c + q_pe_h . k_pe
    o_h       = softmax(...) @ c, then W_UV_h
every head attends over the same latents, a multi-query attention with key size L + R whose
value is the key's first L dims. The model (models/deepseek_v2.py) does the absorption; this
layer writes the latents into the cache and attends over them.

Cache layout (one tensor per layer, vLLM's MLA layout, not the K/V pair of the backends):
    kv_cache: [num_blocks, block_size, L + R]    row = [ c: L | k_pe: R ]
The layer reads the step's CommonAttentionMetadata (block table, slot mapping, lengths) from the
forward context whatever backend built it, and attends in PyTorch, one request at a time
(float32 scores, like the reference backend); the compiled CPU kernel has no MLA variant yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.attention.backend import AttentionBackend, CommonAttentionMetadata
from pagedllm.forward_context import get_forward_context
from pagedllm.model_executor.layers.attention import Attention
from pagedllm.utils.math import cdiv


class MLAAttention(Attention):
    """The attention core of one MLA layer: (absorbed query, latents) -> per-head latent output.

    It is an Attention (one entry of attention_layers(), bound to one cache tensor by the model
    runner) of num_kv_heads 1 and head_size L + R, the bytes the KV cache is sized by."""

    def __init__(
        self, num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int, scale: float,
        prefix: str = "",
    ) -> None:  # fmt: skip
        super().__init__(num_heads, kv_lora_rank + qk_rope_head_dim, scale, 1, prefix=prefix)
        self.kv_lora_rank = kv_lora_rank
        self.qk_rope_head_dim = qk_rope_head_dim

    def bind(self, backend: type[AttentionBackend], kv_cache: torch.Tensor) -> None:
        # NOTE: the selected backend's impl is not used: its kernels read K/V pairs.
        assert kv_cache.dim() == 3 and kv_cache.shape[-1] == self.head_size, kv_cache.shape
        self.kv_cache = kv_cache

    def forward(  # type: ignore[override]
        self,
        q_latent: torch.Tensor,  # [T, H, L]: q_nope absorbed through W_UK
        q_pe: torch.Tensor,  # [T, H, R], rotated
        latent: torch.Tensor,  # [T, L]: c, normed
        k_pe: torch.Tensor,  # [T, R], rotated
    ) -> torch.Tensor:  # [T, H, L]: softmax-weighted latents, per head
        assert self.kv_cache is not None, "attention layer not bound"
        metadata = get_forward_context().attn_metadata
        common: CommonAttentionMetadata = getattr(metadata, "common", metadata)
        self._write(latent, k_pe, common.slot_mapping)
        query = torch.cat([q_latent, q_pe], dim=-1)  # [T, H, L + R]
        out = q_latent.new_empty(q_latent.shape)
        qsl = common.query_start_loc_cpu
        for i, seq_len in enumerate(common.seq_lens_cpu):
            start, end = qsl[i], qsl[i + 1]
            out[start:end] = self._attend_one(query[start:end], common, i, seq_len)
        return out

    def _write(self, latent: torch.Tensor, k_pe: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        num_tokens = slot_mapping.shape[0]
        rows = torch.cat([latent[:num_tokens], k_pe[:num_tokens]], dim=-1)  # [T, L + R]
        slots = self.kv_cache.view(-1, self.head_size)  # [num_blocks * block_size, L + R]
        slots.index_copy_(0, slot_mapping, rows.to(slots.dtype))

    def _attend_one(
        self, q: torch.Tensor, common: CommonAttentionMetadata, i: int, seq_len: int
    ) -> torch.Tensor:
        # q: [nq, H, L + R]; the request's latents: [seq_len, L + R]
        num_query = q.shape[0]
        blocks = common.block_table[i, : cdiv(seq_len, common.block_size)].long()
        cached = self.kv_cache[blocks].flatten(0, 1)[:seq_len].float()
        q_pos = torch.arange(seq_len - num_query, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        scores = torch.einsum("qhd,kd->hqk", q.float(), cached) * self.scale  # [H, nq, seq_len]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        out = torch.einsum("hqk,kl->qhl", probs, cached[:, : self.kv_lora_rank])
        return out.to(q.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, kv_lora_rank={self.kv_lora_rank}, "
            f"qk_rope_head_dim={self.qk_rope_head_dim}, scale={self.scale}"
        )
