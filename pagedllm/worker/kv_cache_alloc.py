"""Memory budget -> number of KV blocks; allocation of the per-layer cache tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.attention.backend import AttentionBackend
from pagedllm.attention.ops.kv_quant import KV_CACHE_DTYPES, kv_cache_head_size
from pagedllm.config import CacheConfig, ModelConfig
from pagedllm.distributed import kv_heads_per_rank
from pagedllm.utils.memory import format_bytes


@dataclass(frozen=True)
class KVCacheLayout:
    num_blocks: int
    block_size: int
    bytes_per_block: int
    """Bytes of one block summed over all layers (K and V)."""

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block


def kv_cache_torch_dtype(model_config: ModelConfig, cache_config: CacheConfig) -> torch.dtype:
    """Storage dtype: the model's compute dtype ("auto"), float16 ("fp16"), or int8 /
    float8_e4m3fn with per-token-head scales stored alongside (see attention/ops/kv_quant.py)."""
    if cache_config.kv_cache_dtype == "auto":
        return getattr(torch, model_config.compute_dtype)
    if cache_config.kv_cache_dtype == "fp16":
        return torch.float16
    return KV_CACHE_DTYPES[cache_config.kv_cache_dtype]


def available_memory(device: torch.device) -> int:
    """Bytes the KV cache may take by default: free device memory (CUDA) or available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    import psutil

    return psutil.virtual_memory().available


def plan_kv_cache(
    model_config: ModelConfig, cache_config: CacheConfig, device: torch.device, tp_size: int = 1,
    num_layers: int | None = None,
) -> KVCacheLayout:
    """tp_size > 1: this rank's cache holds its share of the KV heads; on a CPU (the ranks share
    one memory) it takes 1/tp of the budget, so the ranks together plan as many blocks as one
    rank would alone. num_layers: the layers with a KV cache where not every layer has one
    (Jamba's attention layers among its Mamba layers); default num_hidden_layers."""
    dtype = kv_cache_torch_dtype(model_config, cache_config)
    elem = torch.tensor([], dtype=dtype).element_size()
    if model_config.use_mla and dtype.itemsize == 1:
        raise ValueError(f"kv_cache_dtype {cache_config.kv_cache_dtype!r} is not supported for "
                         f"multi-head latent attention (DeepSeek); use 'auto' or 'fp16'")
    head_bytes = kv_cache_head_size(model_config.head_dim, dtype) * elem  # + scale if 8-bit
    # NOTE: MLA caches one latent per token and layer (head_dim = L + R, one "head"), not K and V
    entries = 1 if model_config.use_mla else 2
    per_token = entries * kv_heads_per_rank(model_config.num_kv_heads, tp_size) * head_bytes
    if num_layers is None:
        num_layers = model_config.num_hidden_layers
    bytes_per_block = per_token * cache_config.block_size * num_layers
    if cache_config.num_gpu_blocks_override is not None:
        num_blocks = cache_config.num_gpu_blocks_override
    else:
        budget = cache_config.kv_cache_memory or int(
            available_memory(device) * cache_config.kv_cache_memory_fraction
        )
        if device.type == "cpu":
            budget //= tp_size
        num_blocks = budget // bytes_per_block
        layout = KVCacheLayout(num_blocks, cache_config.block_size, bytes_per_block)
        if layout.num_tokens < model_config.max_model_len:
            raise ValueError(
                f"the KV cache budget {format_bytes(budget)} holds {layout.num_tokens} tokens, "
                f"fewer than max_model_len={model_config.max_model_len} "
                f"({format_bytes(bytes_per_block // cache_config.block_size)} per token); "
                f"raise kv_cache_memory (--kv-cache-memory) or lower max_model_len "
                f"(--max-model-len)"
            )
    return KVCacheLayout(num_blocks, cache_config.block_size, bytes_per_block)


def allocate_kv_caches(
    layout: KVCacheLayout,
    model_config: ModelConfig,
    cache_config: CacheConfig,
    backend: type[AttentionBackend],
    device: torch.device,
    num_layers: int,
    tp_size: int = 1,
) -> list[torch.Tensor]:
    """One cache tensor per attention layer, in the backend's layout.

    NOTE: zero-filled, not torch.empty: batched backends weight masked-out slots by exactly 0,
    and 0 * (uninitialized NaN/inf) would poison the output.
    """
    dtype = kv_cache_torch_dtype(model_config, cache_config)
    if model_config.use_mla:  # [num_blocks, block_size, L + R] (layers/mla_attention.py)
        shape: tuple[int, ...] = (layout.num_blocks, layout.block_size, model_config.head_dim)
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
    shape = backend.get_kv_cache_shape(
        layout.num_blocks, layout.block_size,
        kv_heads_per_rank(model_config.num_kv_heads, tp_size),
        kv_cache_head_size(model_config.head_dim, dtype),
    )  # fmt: skip
    return [
        torch.zeros(shape, dtype=dtype, device=device)
        for _ in range(num_layers)
    ]
