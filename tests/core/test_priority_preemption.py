"""Priority scheduling (`--scheduling-policy priority`): a waiting request of higher priority
(lower value) preempts running requests of strictly lower priority when the batch is full
(max_num_seqs) or the KV cache is; equal priorities never preempt each other, and fcfs never
preempts for a waiting request. Preempted requests resume and finish with the same tokens."""

from __future__ import annotations

import pytest

from pagedllm.request import RequestStatus
from tests.core.core_helpers import (
    FakeRunner,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)


def _running(scheduler) -> list[str]:
    return [r.request_id for r in scheduler.running]


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
def test_full_batch_preempts_lower_priority_for_a_waiting_request(policy: str) -> None:
    scheduler = make_scheduler(max_num_seqs=2, policy=policy)
    runner = FakeRunner()
    scheduler.add_request(make_request("low", 5, max_tokens=10, priority=5, arrival_time=1.0))
    scheduler.add_request(make_request("mid", 5, max_tokens=10, priority=3, arrival_time=2.0))
    step(scheduler, runner)
    assert sorted(_running(scheduler)) == ["low", "mid"]
    scheduler.add_request(make_request("urgent", 5, max_tokens=3, priority=0, arrival_time=3.0))
    so, outs = step(scheduler, runner)
    first = {o.request_id: o.new_token_ids for o in outs.outputs}
    if policy == "fcfs":
        assert "urgent" not in so.num_scheduled_tokens
        assert scheduler.get_request("urgent").status == RequestStatus.WAITING
    else:
        # the lowest priority one gave way; "mid" kept its place
        assert so.finished_req_ids == {"low"}
        assert set(so.num_scheduled_tokens) == {"mid", "urgent"}
        assert scheduler.get_request("low").status == RequestStatus.PREEMPTED
        assert [r.request_id for r in scheduler.waiting] == ["low"]
    tokens, reasons, _ = run_to_completion(scheduler, runner)
    # preempted or not, every request's tokens are its own (token = 1 + position)
    assert first.get("urgent", []) + tokens["urgent"] == [6, 7, 8]
    assert set(reasons) == {"low", "mid", "urgent"}


def test_equal_priority_does_not_preempt() -> None:
    scheduler = make_scheduler(max_num_seqs=1, policy="priority")
    runner = FakeRunner()
    scheduler.add_request(make_request("first", 5, max_tokens=4, priority=1, arrival_time=1.0))
    step(scheduler, runner)
    scheduler.add_request(make_request("second", 5, max_tokens=4, priority=1, arrival_time=2.0))
    so, _ = step(scheduler, runner)
    assert set(so.num_scheduled_tokens) == {"first"} and not so.finished_req_ids
    run_to_completion(scheduler, runner)
    assert runner.new_req_log == ["first", "second"]


def test_full_kv_cache_preempts_lower_priority_for_a_waiting_request() -> None:
    # 6 blocks of 4 tokens: "background" holds 4 of them, "urgent" needs 3.
    scheduler = make_scheduler(num_blocks=6, max_model_len=24, policy="priority")
    runner = FakeRunner()
    scheduler.add_request(make_request("background", 14, max_tokens=8, priority=2))
    step(scheduler, runner)
    assert scheduler.kv_cache_manager.num_free_blocks == 2
    scheduler.add_request(make_request("urgent", 10, max_tokens=2, priority=0))
    so, _ = step(scheduler, runner)
    assert so.finished_req_ids == {"background"}
    assert [d.req_id for d in so.scheduled_new_reqs] == ["urgent"]
    assert so.num_scheduled_tokens == {"urgent": 10}
    tokens, reasons, history = run_to_completion(scheduler, runner)
    assert reasons == {"urgent": "length", "background": "length"}
    assert tokens["background"] == list(range(16, 23))  # resumed and recomputed exactly
    resumed_at = next(i for i, so in enumerate(history)
                      if any(d.req_id == "background" for d in so.scheduled_new_reqs))
    finished_at = next(i for i, so in enumerate(history) if "urgent" in so.finished_req_ids)
    assert resumed_at >= finished_at - 1  # it came back once "urgent" had left room
    kvm = scheduler.kv_cache_manager
    assert kvm.num_free_blocks == kvm.num_blocks and not kvm.req_to_blocks


def test_higher_priority_waiting_behind_nothing_preempts_only_what_it_needs() -> None:
    scheduler = make_scheduler(max_num_seqs=3, policy="priority")
    runner = FakeRunner()
    for name, priority in (("a", 4), ("b", 6), ("c", 5)):
        scheduler.add_request(make_request(name, 5, max_tokens=10, priority=priority))
    step(scheduler, runner)
    scheduler.add_request(make_request("x", 5, max_tokens=2, priority=1))
    so, _ = step(scheduler, runner)
    assert so.finished_req_ids == {"b"}  # one victim, the lowest priority
    assert set(so.num_scheduled_tokens) == {"a", "c", "x"}


def test_nonzero_priority_needs_the_priority_policy() -> None:
    from pagedllm.engine.input_processor import InputProcessor

    fcfs = InputProcessor(None, None)  # type: ignore[arg-type]
    fcfs.validate_priority(0)
    with pytest.raises(ValueError, match="--scheduling-policy fcfs"):
        fcfs.validate_priority(3)
    priority = InputProcessor(None, None, scheduling_policy="priority")  # type: ignore[arg-type]
    priority.validate_priority(-7)
    with pytest.raises(ValueError, match="integer"):
        priority.validate_priority(1.5)  # type: ignore[arg-type]


def test_a_spent_token_budget_does_not_preempt() -> None:
    # no chunked prefill: the 23-token prompt of "urgent" does not fit the 22 tokens two decodes
    # leave of the budget; preempting a decoder would free 1 token and throw away its KV
    scheduler = make_scheduler(max_num_batched_tokens=24, max_model_len=24,
                               enable_chunked_prefill=False, policy="priority")
    runner = FakeRunner()
    for name in ("bg-1", "bg-2"):
        scheduler.add_request(make_request(name, 4, max_tokens=3, priority=3))
    step(scheduler, runner)
    scheduler.add_request(make_request("urgent", 23, max_tokens=1, priority=0))
    so, _ = step(scheduler, runner)
    assert so.num_scheduled_tokens == {"bg-1": 1, "bg-2": 1} and not so.finished_req_ids
    run_to_completion(scheduler, runner)
    assert runner.new_req_log == ["bg-1", "bg-2", "urgent"]
