"""The scheduler's state slots (models with Mamba layers): a request runs only while it holds a
slot, no two running requests share one, preemption and abort give the slot back, and a
request always (re)starts at position 0 in a fresh slot. No model: the runner is faked."""

from __future__ import annotations

import pytest

from pagedllm.config.cache import CacheConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.core.sched.output import SchedulerOutput
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.core.state_slots import StateSlotPool
from pagedllm.request import RequestStatus
from tests.core.core_helpers import BLOCK_SIZE, FakeRunner, make_request, step


def make_scheduler(num_state_slots: int, max_num_seqs: int, num_blocks: int = 64,
                   max_model_len: int = 64) -> Scheduler:
    """Prefix caching off, as for every model with Mamba layers."""
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=64),
        CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=False),
        num_blocks=num_blocks, max_model_len=max_model_len, num_state_slots=num_state_slots)


class SlotTracker:
    """The runner's view of the slots, from SchedulerOutputs only."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.num_resumed = 0

    def observe(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self.held.pop(req_id, None)
        for new in so.scheduled_new_reqs:
            assert new.state_slot is not None
            assert new.state_slot not in self.held.values(), "a slot shared by two requests"
            assert new.num_computed_tokens == 0, "a state cannot resume from a prefix"
            self.num_resumed += bool(new.output_token_ids)
            self.held[new.req_id] = new.state_slot
        assert set(so.num_scheduled_tokens) <= set(self.held), "scheduled without a slot"


def _run(scheduler: Scheduler, tracker: SlotTracker, runner: FakeRunner | None = None) -> None:
    runner = runner or FakeRunner()
    for _ in range(500):
        if not scheduler.has_unfinished_requests():
            break
        so, _ = step(scheduler, runner)
        tracker.observe(so)
    assert not scheduler.has_unfinished_requests()
    pool = scheduler.state_slots
    assert pool.num_free == pool.num_slots and not pool.slot_of


def test_slots_bound_the_running_requests() -> None:
    scheduler = make_scheduler(num_state_slots=2, max_num_seqs=8)
    for name in "abcd":
        scheduler.add_request(make_request(name, 6, max_tokens=3))
    tracker, runner = SlotTracker(), FakeRunner()
    so, _ = step(scheduler, runner)
    tracker.observe(so)
    assert sorted(so.num_scheduled_tokens) == ["a", "b"]  # blocks and budget for all four
    assert sorted(tracker.held.values()) == [0, 1]
    _run(scheduler, tracker, runner)


def test_preemption_frees_the_slot_and_resumes_from_zero() -> None:
    # 4 blocks of 4 tokens for three requests of 6 + 6 tokens: decodes must preempt
    scheduler = make_scheduler(num_blocks=4, max_model_len=16, num_state_slots=3,
                               max_num_seqs=3)
    for name in "abc":
        scheduler.add_request(make_request(name, 6, max_tokens=6))
    tracker = SlotTracker()
    _run(scheduler, tracker)
    assert tracker.num_resumed > 0, "the small cache was meant to preempt"


def test_abort_frees_the_slot() -> None:
    scheduler = make_scheduler(num_state_slots=1, max_num_seqs=4)
    scheduler.add_request(make_request("a", 4, max_tokens=8))
    scheduler.add_request(make_request("b", 4, max_tokens=2))
    so, _ = step(scheduler, FakeRunner())
    assert list(so.num_scheduled_tokens) == ["a"]  # one slot: b waits
    scheduler.finish_requests("a", RequestStatus.FINISHED_ABORTED)
    assert scheduler.state_slots.num_free == 1
    so = scheduler.schedule()
    assert [d.req_id for d in so.scheduled_new_reqs] == ["b"]
    assert so.scheduled_new_reqs[0].state_slot == 0


def test_pool_hands_out_each_slot_once() -> None:
    pool = StateSlotPool(2)
    assert [pool.allocate("x"), pool.allocate("y")] == [0, 1]
    assert pool.num_free == 0
    pool.free("x")
    pool.free("never-admitted")  # nothing held: nothing freed
    assert pool.allocate("z") == 0 and pool.num_free == 0


def test_prefix_caching_with_states_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix caching must be off"):
        Scheduler(SchedulerConfig(), CacheConfig(block_size=BLOCK_SIZE), num_blocks=64,
                  max_model_len=64, num_state_slots=2)
