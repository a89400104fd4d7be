"""LoRAModelManager: the worker's side of multi-LoRA. It wraps the model's projections in
LoRALinear layers once, keeps the adapters' weights (an LRU of `max_cpu_loras` on the CPU) and
assigns adapters to the layers' `max_loras` slots (an LRU too), and each step turns the
requests' adapters into the per-token slot mapping the layers read.

    request ─ lora_int_id ─▶ slot (resident: reused; else a free or least recently used slot
                              not needed this step, filled from the CPU cache, loaded from disk
                              on a miss)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pagedllm.config.lora import LoRAConfig
from pagedllm.logger import init_logger
from pagedllm.lora.layers import LoRALinear, LoRAMapping
from pagedllm.lora.peft_config import SUPPORTED_TARGETS, read_adapter
from pagedllm.lora.request import LoRARequest
from pagedllm.lora.weights import LoRAWeights, load_lora_weights
from pagedllm.model_executor.layers.linear import LinearBase

logger = init_logger(__name__)


@dataclass
class LoRACounters:
    """Cumulative adapter traffic (for logs and metrics)."""

    loads: int = 0
    """Adapters read from disk."""
    cpu_evictions: int = 0
    """Adapters dropped from the CPU cache."""
    slot_evictions: int = 0
    """Resident adapters replaced in a slot by another."""


class LoRAModelManager:
    def __init__(self, model: nn.Module, config: LoRAConfig, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.config = config
        self.dtype = dtype
        self.device = device
        self.layers: dict[str, LoRALinear] = {}
        """Our module name (model.layers.0.self_attn.qkv_proj) -> its wrapper."""
        self.targets: dict[str, tuple[str, int]] = {}
        """Checkpoint module name (...self_attn.k_proj) -> (our module, output slice)."""
        self._wrap(model, getattr(type(model), "packed_modules_mapping", {}))
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no projection that can take a LoRA "
                             f"adapter ({', '.join(SUPPORTED_TARGETS)})")
        self._shapes = {n: (m.input_size, m.output_sizes) for n, m in self.layers.items()}
        self.request_loras: dict[str, LoRARequest] = {}
        """Requests the runner holds that run under an adapter."""
        self._cpu: OrderedDict[int, LoRAWeights] = OrderedDict()
        self._slots: OrderedDict[int, int] = OrderedDict()
        """lora_int_id -> slot, least recently used first."""
        self.counters = LoRACounters()
        logger.info("LoRA: %d layers take adapters (%d slots of rank <= %d, %d on the CPU)",
                    len(self.layers), config.max_loras, config.max_lora_rank,
                    config.cpu_capacity)

    def _wrap(self, model: nn.Module, packed: dict[str, list[str]]) -> None:
        for name, module in list(model.named_modules()):
            if not isinstance(module, LinearBase):
                continue
            parent_name, _, leaf = name.rpartition(".")
            shards = list(packed.get(leaf, [leaf]))
            if not all(s in SUPPORTED_TARGETS for s in shards):
                continue
            wrapper = LoRALinear(module, self.config.max_loras, self.config.max_lora_rank,
                                 self.dtype, self.device)
            setattr(model.get_submodule(parent_name), leaf, wrapper)
            self.layers[name] = wrapper
            for index, shard in enumerate(shards):
                self.targets[f"{parent_name}.{shard}"] = (name, index)

    # ---- requests ------------------------------------------------------------------------

    def add_request(self, req_id: str, lora: LoRARequest | None) -> None:
        if lora is not None:
            self.request_loras[req_id] = lora

    def remove_request(self, req_id: str) -> None:
        self.request_loras.pop(req_id, None)

    # ---- one step ------------------------------------------------------------------------

    def step_mapping(self, req_ids: list[str], num_scheduled: np.ndarray) -> LoRAMapping | None:
        """The step's per-token slots (requests in packing order, num_scheduled tokens each);
        None when no scheduled request has an adapter."""
        loras = [self.request_loras.get(r) for r in req_ids]
        needed = {lora.lora_int_id: lora for lora in loras if lora is not None}
        if not needed:
            return None
        assert len(needed) <= self.config.max_loras, "the scheduler caps adapters per step"
        slot_of = {i: self._activate(lora, needed) for i, lora in needed.items()}
        base = self.config.max_loras  # one past the last slot: the base model (no update)
        slots = np.fromiter((base if lora is None else slot_of[lora.lora_int_id]
                             for lora in loras), dtype=np.int64, count=len(loras))
        return LoRAMapping.from_token_slots(np.repeat(slots, num_scheduled),
                                            self.config.max_loras, self.device)

    def _activate(self, lora: LoRARequest, needed: dict[int, LoRARequest]) -> int:
        """The slot holding `lora`, filling one if it is not resident."""
        lora_id = lora.lora_int_id
        if lora_id in self._slots:
            self._slots.move_to_end(lora_id)
            return self._slots[lora_id]
        weights = self._cpu_weights(lora)
        slot = self._free_slot(needed)
        for layer in self.layers.values():
            layer.clear_slot(slot)
        for (module, index), (a, b) in weights.slices.items():
            self.layers[module].set_slot(slot, index, a.to(self.device), b.to(self.device))
        self._slots[lora_id] = slot
        return slot

    def _free_slot(self, needed: dict[int, LoRARequest]) -> int:
        used = set(self._slots.values())
        for slot in range(self.config.max_loras):
            if slot not in used:
                return slot
        victim = next(i for i in self._slots if i not in needed)
        self.counters.slot_evictions += 1
        return self._slots.pop(victim)

    def _cpu_weights(self, lora: LoRARequest) -> LoRAWeights:
        lora_id = lora.lora_int_id
        if lora_id in self._cpu:
            self._cpu.move_to_end(lora_id)
            return self._cpu[lora_id]
        adapter = read_adapter(lora, self.config.max_lora_rank)
        weights = load_lora_weights(lora_id, lora.lora_name, adapter, self.targets,
                                    self._shapes, self.dtype)
        self.counters.loads += 1
        while len(self._cpu) >= self.config.cpu_capacity:
            self._cpu.popitem(last=False)
            self.counters.cpu_evictions += 1
        self._cpu[lora_id] = weights
        logger.info("LoRA %r (id %d, rank %d) loaded from %s", lora.lora_name, lora_id,
                    adapter.rank, lora.lora_path)
        return weights
