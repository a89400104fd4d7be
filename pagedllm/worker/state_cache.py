"""The state cache of a model with Mamba layers: per request slot, every Mamba layer's conv and
SSM states (config/state_cache.py sizes them), beside the paged KV cache of its attention layers.

Planning: the slots come out of the same memory budget as the KV cache, first: max_num_seqs
slots (every running request holds one, and at most max_num_seqs run), the KV blocks get the
rest. A budget that cannot hold them and max_model_len tokens of KV is refused at start-up,
naming both sizes.

Runtime: the scheduler assigns each admitted request a slot (NewRequestData.state_slot); the
runner tells this cache (add_request / remove_request) and, before each forward, builds the
step's MambaStepMetadata (prepare), which the mixers read through their binding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from pagedllm.config import EngineConfig
from pagedllm.config.state_cache import MambaStateSpec, mamba_state_spec
from pagedllm.model_executor.layers.mamba import MambaStepMetadata, mamba_mixers
from pagedllm.utils.math import cdiv
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.kv_cache_alloc import KVCacheLayout, available_memory, plan_kv_cache


@dataclass(frozen=True)
class StateCachePlan:
    spec: MambaStateSpec
    num_slots: int
    kv_cache_config: object
    """The CacheConfig the KV cache is planned with: the budget left after the states."""

    @property
    def total_bytes(self) -> int:
        return self.num_slots * self.spec.bytes_per_slot


def plan_state_cache(config: EngineConfig, device: torch.device) -> StateCachePlan | None:
    """None for a model without Mamba layers. Otherwise max_num_seqs slots, carved out of the
    KV cache budget (kv_cache_memory, else the device's free memory times the fraction); with
    num_gpu_blocks_override the states come on top of the blocks."""
    tp = config.parallel.tensor_parallel_size
    spec = mamba_state_spec(config.model.hf_config, tp)  # (this rank's channels / heads)
    if spec is None:
        return None
    cache = config.cache
    num_slots = config.scheduler.max_num_seqs
    state_bytes = num_slots * spec.bytes_per_slot
    if cache.num_gpu_blocks_override is not None:
        return StateCachePlan(spec, num_slots, cache)
    budget = cache.kv_cache_memory or int(available_memory(device)
                                          * cache.kv_cache_memory_fraction)
    # On a CPU the ranks share one memory: this rank's share of the budget is 1/tp (as
    # plan_kv_cache takes it), and every rank's states come out of the one budget.
    ranks_sharing = tp if device.type == "cpu" else 1
    state_bytes *= ranks_sharing
    if state_bytes >= budget:
        raise ValueError(
            f"the Mamba state cache of max_num_seqs={num_slots} sequences takes "
            f"{format_bytes(state_bytes)} ({format_bytes(spec.bytes_per_slot)} per sequence"
            f"{' and rank' if ranks_sharing > 1 else ''}, "
            f"{len(spec.mamba_layers)} Mamba layers), more than the cache budget "
            f"{format_bytes(budget)}: lower max_num_seqs (--max-num-seqs) or raise "
            f"kv_cache_memory (--kv-cache-memory)")
    return StateCachePlan(spec, num_slots, replace(cache, kv_cache_memory=budget - state_bytes))


def plan_kv_cache_beside_states(config: EngineConfig, plan: StateCachePlan,
                                device: torch.device) -> KVCacheLayout:
    """The KV cache of the attention layers, from the budget the states left. A model without
    attention layers (Mamba) stores no K/V: its blocks hold 0 bytes and only count each
    request's tokens for the scheduler, as many as max_num_seqs full-length requests need."""
    block_size = config.cache.block_size
    if plan.spec.num_attention_layers == 0:
        per_request = cdiv(config.model.max_model_len, block_size)
        return KVCacheLayout(plan.num_slots * per_request, block_size, 0)
    try:
        return plan_kv_cache(config.model, plan.kv_cache_config, device,
                             config.parallel.tensor_parallel_size,
                             num_layers=plan.spec.num_attention_layers)
    except ValueError as e:
        raise ValueError(
            f"{e}; that is what the Mamba state cache left: it takes "
            f"{format_bytes(plan.total_bytes)} for max_num_seqs={plan.num_slots} sequences "
            f"(lower max_num_seqs to leave more to the KV cache)") from e


class StateCache:
    """conv_states[i] / ssm_states[i]: the i-th Mamba layer's states, [num_slots, ...] float32,
    zero-filled. current: the running step's metadata (None between steps)."""

    def __init__(self, plan: StateCachePlan, device: torch.device) -> None:
        spec, n = plan.spec, plan.num_slots
        self.num_slots = n
        self.conv_states = [torch.zeros((n, *spec.conv_state_shape), device=device)
                            for _ in spec.mamba_layers]
        self.ssm_states = [torch.zeros((n, *spec.ssm_state_shape), device=device)
                           for _ in spec.mamba_layers]
        self.device = device
        self.slot_of: dict[str, int] = {}
        self.current: MambaStepMetadata | None = None

    def bind(self, model: nn.Module) -> None:
        mixers = mamba_mixers(model)
        assert len(mixers) == len(self.conv_states), (len(mixers), len(self.conv_states))
        for index, mixer in enumerate(mixers):
            mixer.bind_state_cache(self, index)

    def add_request(self, req_id: str, slot: int | None) -> None:
        assert slot is not None and 0 <= slot < self.num_slots, (req_id, slot)
        self.slot_of[req_id] = slot

    def remove_request(self, req_id: str) -> None:
        self.slot_of.pop(req_id, None)

    def prepare(self, req_ids: list[str], starts: np.ndarray, counts: np.ndarray) -> None:
        """The step's metadata: req_ids in packing order, each one's first position and its
        number of tokens this step."""
        slots = [self.slot_of[r] for r in req_ids]
        self.current = MambaStepMetadata.build(slots, starts, counts, self.device)
