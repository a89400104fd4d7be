"""The scheduler's side of speculative decoding: drafts are budgeted, capped by what the request
may still emit, given KV slots, and stepped back over when rejected."""

from __future__ import annotations

from pagedllm.core.sched.output import ModelRunnerOutput
from tests.core.core_helpers import make_request, make_scheduler


def prefill(scheduler, request) -> None:
    out = scheduler.schedule()
    scheduler.update_from_output(out, ModelRunnerOutput(
        req_ids=[request.request_id], sampled_token_ids={request.request_id: [7]},
        spec_token_ids={request.request_id: [1, 2, 3, 4]}))


def test_drafts_ride_on_the_next_decode_and_rejections_step_back():
    scheduler = make_scheduler()
    request = make_request("r", 6, max_tokens=20)
    scheduler.add_request(request)
    prefill(scheduler, request)
    assert request.spec_token_ids == [1, 2, 3, 4]
    out = scheduler.schedule()
    assert out.scheduled_spec_decode_tokens == {"r": [1, 2, 3, 4]}
    assert out.num_scheduled_tokens == {"r": 5}
    assert request.num_computed_tokens == 7 + 4  # the last token and the 4 drafts
    held = len(scheduler.kv_cache_manager.get_block_ids("r")) * 4
    assert held >= 11, "every draft has a slot"
    # two drafts accepted, then the target's own token
    result = scheduler.update_from_output(out, ModelRunnerOutput(
        req_ids=["r"], sampled_token_ids={"r": [1, 2, 9]}))
    assert request.output_token_ids == [7, 1, 2, 9]
    assert request.num_computed_tokens == 6 + 3, "the rejected drafts' slots are not computed"
    assert result.scheduler_stats.spec_decoding_stats.num_accepted_tokens == 2
    assert result.scheduler_stats.spec_decoding_stats.num_accepted_tokens_per_pos == [1, 1, 0, 0]
    assert request.spec_token_ids == [], "no new drafts were proposed"


def test_drafts_are_capped_by_max_tokens_and_the_budget():
    scheduler = make_scheduler(max_num_batched_tokens=3)
    request = make_request("r", 2, max_tokens=4)
    scheduler.add_request(request)
    prefill(scheduler, request)
    out = scheduler.schedule()
    # one output so far, at most 3 more: the decode's own token and 2 drafts (also the budget)
    assert out.scheduled_spec_decode_tokens == {"r": [1, 2]}
    scheduler.update_from_output(out, ModelRunnerOutput(
        req_ids=["r"], sampled_token_ids={"r": [1, 2, 3]}, spec_token_ids={"r": [5, 5]}))
    assert request.is_finished() and request.output_token_ids == [7, 1, 2, 3]


def test_preemption_drops_the_drafts():
    scheduler = make_scheduler()
    request = make_request("r", 6, max_tokens=20)
    scheduler.add_request(request)
    prefill(scheduler, request)
    scheduler._preempt(request, type("Step", (), {"unschedule": lambda *_: None,
                                                  "preempted": []})())
    assert request.spec_token_ids == []
