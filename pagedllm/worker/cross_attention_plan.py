"""The KV cache budget of an encoder-decoder (BART, T5) split between the decoder's paged
self-attention cache and its cross-attention K/V.

Each running request holds its encoder output's cross-attention K/V for every decoder layer
(worker/encoder_decoder.py): written once, read whole by every step, never shared, never grown,
so they are kept per request rather than in blocks. They still come out of the same memory
budget, and the scheduler admits a request only when its encoder tokens fit
(core/cross_attention_budget.py). The split: as many encoder tokens of cross-attention as the
paged cache holds decoder tokens (BART and T5 bound both sides alike: max_position_embeddings
or max_model_len), so tokens x (self bytes + cross bytes) <= the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pagedllm.config import CacheConfig, EngineConfig, ModelConfig
from pagedllm.logger import init_logger
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.kv_cache_alloc import (
    KVCacheLayout,
    available_memory,
    plan_kv_cache,
)

logger = init_logger(__name__)


@dataclass(frozen=True)
class CrossAttentionPlan:
    num_tokens: int
    """Encoder tokens whose cross-attention K/V the running requests may hold together."""
    bytes_per_token: int
    """One encoder token's K and V over all decoder layers."""

    @property
    def total_bytes(self) -> int:
        return self.num_tokens * self.bytes_per_token


def cross_attention_bytes_per_token(model_config: ModelConfig) -> int:
    """K and V of every decoder layer's cross-attention, in the compute dtype (the store keeps
    the projection's output as it is): heads x head_dim are the decoder's for BART and T5."""
    elem = torch.tensor([], dtype=getattr(torch, model_config.compute_dtype)).element_size()
    return (model_config.num_hidden_layers * 2 * model_config.num_kv_heads
            * model_config.head_dim * elem)


def plan_encoder_decoder_cache(model_config: ModelConfig, cache_config: CacheConfig,
                               device: torch.device, max_encoder_len: int,
                               max_num_seqs: int) -> tuple[KVCacheLayout, CrossAttentionPlan]:
    """The paged cache's layout and the cross-attention budget, both from one memory budget.
    With num_gpu_blocks_override there is no memory budget to split (the blocks are a test
    knob): the cross-attention budget then holds max_num_seqs longest encoder prompts, so only
    the blocks limit the batch, as before."""
    cross_bytes = cross_attention_bytes_per_token(model_config)
    if cache_config.num_gpu_blocks_override is not None:
        layout = plan_kv_cache(model_config, cache_config, device)
        return layout, CrossAttentionPlan(max_num_seqs * max_encoder_len, cross_bytes)
    budget = cache_config.kv_cache_memory or int(
        available_memory(device) * cache_config.kv_cache_memory_fraction)
    self_bytes = plan_kv_cache(
        model_config, replace(cache_config, num_gpu_blocks_override=1), device
    ).bytes_per_block // cache_config.block_size
    self_share = budget * self_bytes // (self_bytes + cross_bytes)
    layout = plan_kv_cache(model_config, replace(cache_config, kv_cache_memory=self_share),
                           device)
    cross = CrossAttentionPlan(layout.num_tokens, cross_bytes)
    if cross.num_tokens < max_encoder_len:
        raise ValueError(
            f"the KV cache budget {format_bytes(budget)} holds the cross-attention K/V of "
            f"{cross.num_tokens} encoder tokens ({format_bytes(cross_bytes)} per token) beside "
            f"as many decoder tokens, fewer than the longest encoder prompt ({max_encoder_len} "
            f"tokens); raise kv_cache_memory (--kv-cache-memory)")
    return layout, cross



def plan_cross_attention(config: EngineConfig,
                         device: torch.device) -> tuple[KVCacheLayout, CrossAttentionPlan]:
    """The worker's call: both plans for the engine's config, the split logged."""
    from pagedllm.engine.encoder_decoder_prompt import max_encoder_len

    layout, cross = plan_encoder_decoder_cache(config.model, config.cache, device,
                                               max_encoder_len(config.model),
                                               config.scheduler.max_num_seqs)
    logger.info("cross-attention K/V: %d encoder tokens x %s = %s of the KV cache budget "
                "(the scheduler admits a request when its encoder tokens fit)",
                cross.num_tokens, format_bytes(cross.bytes_per_token),
                format_bytes(cross.total_bytes))
    return layout, cross
