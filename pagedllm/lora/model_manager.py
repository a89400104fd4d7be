"""LoRAModelManager: the worker's side of multi-LoRA. It wraps the model's projections in
LoRALinear layers once, keeps the adapters' weights in CPU memory and assigns adapters to the
layers' `max_loras` slots (an LRU), and each step turns the requests' adapters into the
per-token slot mapping the layers read.

Which adapters stay in CPU memory is the scheduler's decision (core/sched/lora_residency.py):
it sends loads and drops with each step; a load runs in a background thread (reading
safetensors never holds up a step) and is reported back once done (`report`), and only then
does the scheduler admit the adapter's requests. So filling a slot is a copy from CPU memory.

    request ─ lora_int_id ─▶ slot (resident: reused; else a free or least recently used slot
                              not needed this step, filled from the CPU copy)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

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
    """Adapters read from disk (in the background)."""
    drops: int = 0
    """CPU copies freed on the scheduler's word (evicted or unloaded)."""
    slot_evictions: int = 0
    """Resident adapters replaced in a slot by another."""
    step_loads: int = 0
    """Adapters read from disk inside a step (never, while the scheduler admits a request
    only once its adapter is loaded; kept as a safe fallback)."""


@dataclass
class LoRALoadReport:
    """What changed since the last report (ModelRunnerOutput's lora fields)."""

    loaded: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    num_slot_evictions: int = 0


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
        self.other_stages = tuple(f"{name}." for name, module in model.named_modules()
                                  if getattr(module, "pp_missing", False))
        """Pipeline parallelism: the layers other stages hold (each stage loads its own
        layers' share of an adapter)."""
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no projection that can take a LoRA "
                             f"adapter ({', '.join(SUPPORTED_TARGETS)})")
        # (the whole layer's sizes: an adapter holds whole matrices; under tensor parallelism
        # each slot takes the rank's slice, LoRALinear.set_slot)
        self._shapes = {n: (m.base_layer.input_size, list(m.base_layer.output_sizes))
                        for n, m in self.layers.items()}
        self.request_loras: dict[str, LoRARequest] = {}
        """Requests the runner holds that run under an adapter."""
        self._cpu: dict[int, LoRAWeights] = {}
        """Adapters in CPU memory (the scheduler says which)."""
        self._loading: dict[int, Future[LoRAWeights]] = {}
        self._loader: ThreadPoolExecutor | None = None
        self.read_weights: Callable[[LoRARequest], LoRAWeights] = self._read_weights
        """Reads one adapter from disk (runs on the loader thread; tests wrap it)."""
        self._slots: OrderedDict[int, int] = OrderedDict()
        """lora_int_id -> slot, least recently used first."""
        self.counters = LoRACounters()
        self._reported_slot_evictions = 0
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

    # ---- CPU copies (the scheduler's loads and drops) -------------------------------------

    def update(self, loads: list[LoRARequest], drops: list[int]) -> None:
        """Free the dropped adapters' CPU copies and slots; start reading the new ones."""
        for lora_id in drops:
            self._drop(lora_id)
        for lora in loads:
            if lora.lora_int_id not in self._cpu and lora.lora_int_id not in self._loading:
                if self._loader is None:
                    self._loader = ThreadPoolExecutor(1, thread_name_prefix="pagedllm-lora")
                self._loading[lora.lora_int_id] = self._loader.submit(self.read_weights, lora)

    def _drop(self, lora_id: int) -> None:
        future = self._loading.pop(lora_id, None)
        if future is not None:
            future.cancel()  # (a read under way finishes and is thrown away)
        if self._cpu.pop(lora_id, None) is not None:
            self.counters.drops += 1
        slot = self._slots.pop(lora_id, None)
        if slot is not None:
            for layer in self.layers.values():
                layer.clear_slot(slot)

    def wait_for_loads(self, timeout: float) -> None:
        """Block until a load finishes or `timeout` passes (for steps with nothing to run)."""
        if self._loading:
            wait(list(self._loading.values()), timeout, return_when=FIRST_COMPLETED)

    def report(self) -> LoRALoadReport:
        """Loads finished (into CPU memory) or failed since the last report."""
        report = LoRALoadReport()
        for lora_id, future in list(self._loading.items()):
            if not future.done():
                continue
            del self._loading[lora_id]
            try:
                self._cpu[lora_id] = future.result()
            except Exception as e:  # reported: the scheduler aborts the adapter's requests
                logger.warning("LoRA id %d failed to load: %s", lora_id, e)
                report.failed[lora_id] = str(e) if isinstance(e, (ValueError, OSError)) \
                    else f"{type(e).__name__}: {e}"
                continue
            self.counters.loads += 1
            report.loaded.append(lora_id)
        report.num_slot_evictions = self.counters.slot_evictions - self._reported_slot_evictions
        self._reported_slot_evictions = self.counters.slot_evictions
        return report

    @property
    def resident(self) -> dict[str, list[int]]:
        """The adapter ids in CPU memory, loading and in slots (for tests and debugging)."""
        return {"cpu": sorted(self._cpu), "loading": sorted(self._loading),
                "slots": sorted(self._slots)}

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
            return self._cpu[lora_id]
        # NOTE: the scheduler admits a request only once its adapter is loaded; this read
        # inside the step is a fallback (a caller that skips the scheduler), logged
        logger.warning("LoRA %r (id %d) read inside a step", lora.lora_name, lora_id)
        self.counters.step_loads += 1
        future = self._loading.pop(lora_id, None)
        self._cpu[lora_id] = future.result() if future is not None else self.read_weights(lora)
        return self._cpu[lora_id]

    def _read_weights(self, lora: LoRARequest) -> LoRAWeights:
        adapter = read_adapter(lora, self.config.max_lora_rank)
        weights = load_lora_weights(lora.lora_int_id, lora.lora_name, adapter, self.targets,
                                    self._shapes, self.dtype, self.other_stages)
        logger.info("LoRA %r (id %d, rank %d) loaded from %s", lora.lora_name,
                    lora.lora_int_id, adapter.rank, lora.lora_path)
        return weights
