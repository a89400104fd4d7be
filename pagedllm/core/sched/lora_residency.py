"""LoRAResidency: the scheduler's record of which adapters the workers hold in CPU memory.

Reading an adapter from disk is slow (safetensors, dtype conversion), so it never happens
inside a step: the scheduler asks the workers to load an adapter (SchedulerOutput.lora_loads),
they read it in a background thread while steps go on, and report it ready
(ModelRunnerOutput.lora_loaded). A waiting request is admitted only once its adapter is ready;
filling a slot from the CPU copy is then cheap. The scheduler decides what the workers keep (an
LRU of `capacity` adapters) and tells them what to drop (SchedulerOutput.lora_drops), so the two
never disagree:

    request added ─▶ acquire (refcount) ── waiting, adapter not ready ─▶ load requested
                                                      ▲                        │ (worker thread)
    admitted ◀── ready ◀── lora_loaded in a runner output ◀────────────────────┘

An adapter used by an unfinished request (running or waiting) is never dropped: its requests
could be admitted or need their slot refilled at any step. remove() (the user unloads the
adapter) drops it at once, or when its last request ends.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from pagedllm.lora.request import LoRARequest


@dataclass
class LoRACommands:
    """What the workers must do with their CPU copies this step."""

    loads: list[LoRARequest] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)


class LoRAResidency:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[int, LoRARequest] = OrderedDict()
        """Adapters asked of the workers (loading or ready), least recently used first."""
        self.ready: set[int] = set()
        """Of those, the ones the workers reported loaded."""
        self.refs: Counter[int] = Counter()
        """Unfinished requests per adapter id."""
        self.unloading: set[int] = set()
        """Removed by the user while requests still use them: dropped when the last one ends."""
        self._commands = LoRACommands()
        self.num_loads = 0
        """Adapters the workers finished loading since the last take_counts()."""
        self.num_evictions = 0
        """Adapters dropped to make room since the last take_counts()."""

    # ---- requests -----------------------------------------------------------------------------

    def acquire(self, lora: LoRARequest) -> None:
        self.refs[lora.lora_int_id] += 1
        self.unloading.discard(lora.lora_int_id)  # the same id in use again: keep it

    def release(self, lora: LoRARequest) -> None:
        lora_id = lora.lora_int_id
        self.refs[lora_id] -= 1
        if self.refs[lora_id] <= 0:
            del self.refs[lora_id]
            if lora_id in self.unloading:
                self.unloading.discard(lora_id)
                self._drop(lora_id)

    def is_ready(self, lora: LoRARequest) -> bool:
        """Whether the workers hold the adapter in CPU memory; if not, ask them to load it
        (when there is room: otherwise later, once an adapter no request uses can go)."""
        lora_id = lora.lora_int_id
        if lora_id in self.entries:
            self.entries.move_to_end(lora_id)
            return lora_id in self.ready
        if self._make_room():
            self.entries[lora_id] = lora
            self._commands.loads.append(lora)
        return False

    def _make_room(self) -> bool:
        while len(self.entries) >= self.capacity:
            victim = next((i for i in self.entries if i not in self.refs), None)
            if victim is None:
                return False
            self._drop(victim)
            self.num_evictions += 1
        return True

    def remove(self, lora_id: int) -> bool:
        """The user unloaded the adapter: drop it now, or once no request uses it. False when
        the workers do not hold it."""
        if lora_id not in self.entries:
            return False
        if lora_id in self.refs:
            self.unloading.add(lora_id)
        else:
            self._drop(lora_id)
        return True

    def _drop(self, lora_id: int) -> None:
        if self.entries.pop(lora_id, None) is not None:
            self.ready.discard(lora_id)
            self._commands.drops.append(lora_id)

    # ---- the workers' side ----------------------------------------------------------------------

    def take_commands(self) -> LoRACommands:
        commands, self._commands = self._commands, LoRACommands()
        return commands

    def on_loaded(self, lora_ids: list[int]) -> None:
        for lora_id in lora_ids:
            if lora_id in self.entries:  # (else dropped while it loaded: the drop follows)
                self.ready.add(lora_id)
                self.num_loads += 1

    def on_failed(self, lora_id: int) -> None:
        self.entries.pop(lora_id, None)
        self.ready.discard(lora_id)

    def take_counts(self) -> tuple[int, int]:
        """(loads, evictions) since the last call."""
        counts = (self.num_loads, self.num_evictions)
        self.num_loads = self.num_evictions = 0
        return counts
