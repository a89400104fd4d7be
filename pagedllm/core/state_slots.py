"""State slots of a model with Mamba layers: each running request holds one slot of the state
cache (its conv and SSM states, fixed size), handed out by the scheduler together with its KV
blocks and given back with them (finish, abort, preemption)."""

from __future__ import annotations


class StateSlotPool:
    """num_slots slots, ids 0..num_slots-1; a request holds at most one.

    A request is admitted only when a slot and its KV blocks are both free. Slots are not
    cached across requests (a state summarizes a whole sequence: no prefix of another request
    can reuse it), so a freed slot is simply free; the runner starts a state from zeros at a
    request's position 0 whatever the slot held before.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"a state cache needs at least one slot, got {num_slots}")
        self.num_slots = num_slots
        # (reversed: pop() hands out the lowest id first, which keeps tests readable)
        self._free: list[int] = list(range(num_slots - 1, -1, -1))
        self.slot_of: dict[str, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, req_id: str) -> int:
        assert req_id not in self.slot_of, f"{req_id!r} already holds a state slot"
        if not self._free:
            raise RuntimeError("no free state slot (check num_free before admitting)")
        slot = self._free.pop()
        self.slot_of[req_id] = slot
        return slot

    def free(self, req_id: str) -> None:
        """Give the request's slot back (nothing if it holds none: never admitted)."""
        slot = self.slot_of.pop(req_id, None)
        if slot is not None:
            self._free.append(slot)
