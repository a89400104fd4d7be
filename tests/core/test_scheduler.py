import subprocess
import sys

import pytest

from pagedllm.config.cache import CacheConfig
from pagedllm.config.scheduler import SchedulerConfig
from pagedllm.core.sched.output import LogprobsLists, ModelRunnerOutput
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.request import RequestStatus
from tests.core.core_helpers import (
    FakeRunner,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)


def _assert_all_blocks_free(scheduler: Scheduler) -> None:
    kvm = scheduler.kv_cache_manager
    assert kvm.num_free_blocks == kvm.num_blocks and not kvm.req_to_blocks


def test_token_budget_and_chunked_prefill() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=16)
    for name in "abc":
        scheduler.add_request(make_request(name, 10, max_tokens=2))
    runner = FakeRunner()
    so, _ = step(scheduler, runner)
    assert so.num_scheduled_tokens == {"a": 10, "b": 6}
    assert [d.req_id for d in so.scheduled_new_reqs] == ["a", "b"]
    assert [d.num_computed_tokens for d in so.scheduled_new_reqs] == [0, 0]
    so, _ = step(scheduler, runner)
    assert so.num_scheduled_tokens == {"a": 1, "b": 4, "c": 10}
    assert so.scheduled_cached_reqs.req_ids == ["a", "b"]
    assert so.scheduled_cached_reqs.num_computed_tokens == [10, 6]  # start positions
    assert so.total_num_scheduled_tokens == 15
    run_to_completion(scheduler, runner)
    _assert_all_blocks_free(scheduler)


def test_long_prompt_chunks_mixed_with_decodes() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("short", 4, max_tokens=10))
    scheduler.add_request(make_request("long", 30, max_tokens=2))
    runner = FakeRunner()
    history = run_to_completion(scheduler, runner)[2]
    assert history[0].num_scheduled_tokens == {"short": 4, "long": 4}
    long_chunks = []
    for so in history[1:5]:
        assert so.total_num_scheduled_tokens <= 8
        assert so.num_scheduled_tokens["short"] == 1  # decode keeps going during the prefill
        long_chunks.append(so.num_scheduled_tokens["long"])
    assert long_chunks == [7, 7, 7, 5]


def test_long_prefill_token_threshold() -> None:
    scheduler = make_scheduler(long_prefill_token_threshold=4)
    scheduler.add_request(make_request("a", 10, max_tokens=1))
    chunks = [so.num_scheduled_tokens["a"] for so in run_to_completion(scheduler, FakeRunner())[2]]
    assert chunks == [4, 4, 2]


def test_chunked_prefill_disabled_waits_for_room() -> None:
    scheduler = make_scheduler(max_model_len=16, max_num_batched_tokens=16,
                               enable_chunked_prefill=False)
    scheduler.add_request(make_request("a", 10, max_tokens=3))
    scheduler.add_request(make_request("b", 10, max_tokens=3))
    runner = FakeRunner()
    assert step(scheduler, runner)[0].num_scheduled_tokens == {"a": 10}
    assert step(scheduler, runner)[0].num_scheduled_tokens == {"a": 1, "b": 10}
    with pytest.raises(ValueError, match="chunked prefill"):
        make_scheduler(max_model_len=32, max_num_batched_tokens=16, enable_chunked_prefill=False)


def test_max_num_seqs() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        scheduler.add_request(make_request(name, 4, max_tokens=3))
    runner = FakeRunner()
    for _ in range(3):
        so, _ = step(scheduler, runner)
        assert set(so.num_scheduled_tokens) == {"a", "b"}
    so, _ = step(scheduler, runner)  # a and b finished last step
    assert set(so.num_scheduled_tokens) == {"c"} and so.finished_req_ids == {"a", "b"}


def test_fcfs_order() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    for name in "abc":
        scheduler.add_request(make_request(name, 5, max_tokens=2))
    runner = FakeRunner()
    run_to_completion(scheduler, runner)
    assert runner.new_req_log == ["a", "b", "c"]


def test_priority_order() -> None:
    scheduler = make_scheduler(max_num_seqs=1, policy="priority")
    scheduler.add_request(make_request("low", 5, priority=2, arrival_time=1.0))
    scheduler.add_request(make_request("high", 5, priority=0, arrival_time=2.0))
    scheduler.add_request(make_request("mid", 5, priority=1, arrival_time=3.0))
    runner = FakeRunner()
    run_to_completion(scheduler, runner)
    assert runner.new_req_log == ["high", "mid", "low"]


def test_preemption_of_later_arrival_and_resume() -> None:
    # 5 blocks of 4 tokens; two 8-token prompts take 4 blocks; decoding needs more.
    scheduler = make_scheduler(num_blocks=5, max_model_len=20)
    scheduler.add_request(make_request("a", 8, max_tokens=6))
    scheduler.add_request(make_request("b", 8, max_tokens=6))
    runner = FakeRunner()
    step(scheduler, runner)
    so, _ = step(scheduler, runner)
    assert so.num_scheduled_tokens == {"a": 1}  # b preempted itself: it arrived last
    assert "b" in so.finished_req_ids
    b = scheduler.get_request("b")
    assert b is not None and b.status == RequestStatus.PREEMPTED
    assert b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert list(scheduler.waiting)[0] is b
    first_b_token = list(b.output_token_ids)
    tokens, reasons, history = run_to_completion(scheduler, runner)
    resumed = [d for so in history for d in so.scheduled_new_reqs if d.req_id == "b"]
    assert len(resumed) == 1 and resumed[0].output_token_ids == first_b_token
    assert len(resumed[0].block_ids) * 4 >= resumed[0].num_computed_tokens
    a = scheduler.requests.get("a")
    assert len(tokens["a"]) == 4 and len(tokens["b"]) == 5  # (+ 2 and + 1 from the first steps)
    assert b.output_token_ids == list(range(9, 15))  # token = 1 + position: recomputed exactly
    assert a is None and b.num_output_tokens == 6 and b.is_finished()
    assert reasons == {"a": "length", "b": "length"}
    _assert_all_blocks_free(scheduler)


def test_priority_preempts_lowest_priority_even_if_scheduled() -> None:
    scheduler = make_scheduler(num_blocks=5, max_model_len=20, policy="priority")
    runner = FakeRunner()
    scheduler.add_request(make_request("background", 7, max_tokens=8, priority=1))
    step(scheduler, runner)
    scheduler.add_request(make_request("urgent", 8, max_tokens=8, priority=0))
    step(scheduler, runner)
    assert [r.request_id for r in scheduler.running] == ["background", "urgent"]
    so, outs = step(scheduler, runner)
    assert so.num_scheduled_tokens == {"urgent": 1}
    assert so.finished_req_ids == {"background"}
    assert outs.scheduler_stats is not None and outs.scheduler_stats.num_preemptions == 1
    run_to_completion(scheduler, runner)
    _assert_all_blocks_free(scheduler)


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("caching", [True, False])
def test_no_starvation_under_tiny_cache(policy: str, caching: bool) -> None:
    scheduler = make_scheduler(num_blocks=6, max_model_len=24, max_num_batched_tokens=16,
                               policy=policy, enable_prefix_caching=caching)
    prompts = {f"r{i}": 5 + i for i in range(8)}
    for i, (name, n) in enumerate(prompts.items()):
        scheduler.add_request(make_request(name, n, max_tokens=8, priority=i % 3))
    tokens, reasons, _ = run_to_completion(scheduler, FakeRunner())
    assert set(reasons) == set(prompts)
    for name, n in prompts.items():
        assert tokens[name] == list(range(n + 1, n + 9))
    _assert_all_blocks_free(scheduler)


def test_prefix_cache_hit_through_scheduler() -> None:
    scheduler = make_scheduler()
    runner = FakeRunner()
    prompt = list(range(100, 110))
    scheduler.add_request(make_request("a", prompt, max_tokens=1))
    run_to_completion(scheduler, runner)
    scheduler.add_request(make_request("b", prompt, max_tokens=1))
    so = scheduler.schedule()
    assert so.scheduled_new_reqs[0].num_computed_tokens == 8
    assert so.num_scheduled_tokens == {"b": 2}
    outs = scheduler.update_from_output(so, runner.execute(so))
    assert outs.outputs[0].num_cached_tokens == 8
    stats = outs.scheduler_stats
    assert stats is not None and stats.prefix_cache_stats is not None
    assert (stats.prefix_cache_stats.queries, stats.prefix_cache_stats.hits) == (10, 8)
    assert stats.num_prompt_tokens == 2 and stats.num_generation_tokens == 1
    _assert_all_blocks_free(scheduler)


def test_stats_and_outputs() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=12)
    scheduler.add_request(make_request("a", 8, max_tokens=3))
    scheduler.add_request(make_request("b", 8, max_tokens=3))
    so, outs = step(scheduler, FakeRunner())
    assert [o.request_id for o in outs.outputs] == ["a"]  # b is mid-prefill: nothing to report
    stats = outs.scheduler_stats
    assert stats is not None
    assert (stats.num_running_reqs, stats.num_waiting_reqs) == (2, 0)
    assert (stats.num_prompt_tokens, stats.num_generation_tokens) == (12, 1)
    assert stats.num_total_blocks == 64 and stats.num_free_blocks == 64 - 3
    assert stats.kv_cache_usage == pytest.approx(3 / 64)


def test_abort_frees_blocks() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add_request(make_request("run", 6, max_tokens=5))
    scheduler.add_request(make_request("wait", 6, max_tokens=5))
    runner = FakeRunner()
    step(scheduler, runner)
    scheduler.finish_requests(["run", "wait"], RequestStatus.FINISHED_ABORTED)
    scheduler.finish_requests("unknown", RequestStatus.FINISHED_ABORTED)  # ignored
    assert not scheduler.has_unfinished_requests() and scheduler.has_finished_requests()
    assert scheduler.get_request("run") is None
    _assert_all_blocks_free(scheduler)
    so = scheduler.schedule()
    assert so.is_empty and so.finished_req_ids == {"run", "wait"}
    assert scheduler.schedule().finished_req_ids == set()


def test_abort_while_step_in_flight() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 6, max_tokens=5))
    runner = FakeRunner()
    so = scheduler.schedule()
    scheduler.finish_requests("a", RequestStatus.FINISHED_ABORTED)
    outs = scheduler.update_from_output(so, runner.execute(so))
    assert outs.outputs == []
    assert scheduler.schedule().finished_req_ids == {"a"}


def test_tokens_after_stop_are_dropped() -> None:
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4, max_tokens=10, eos_token_ids=(2,), logprobs=1))
    so = scheduler.schedule()
    logprobs = LogprobsLists([[5], [2], [7]], [[-0.1], [-0.2], [-0.3]], [1, 1, 1])
    runner_output = ModelRunnerOutput(["a"], {"a": [5, 2, 7]}, logprobs={"a": logprobs})
    (out,) = scheduler.update_from_output(so, runner_output).outputs
    assert out.new_token_ids == [5, 2] and out.finished and out.finish_reason is not None
    assert out.finish_reason.value == "stop" and out.stop_reason is None
    assert out.new_logprobs is not None and out.new_logprobs.ranks == [1, 1]
    _assert_all_blocks_free(scheduler)
    assert scheduler.schedule().finished_req_ids == {"a"}


def test_stop_token_ids_and_max_model_len_through_scheduler() -> None:
    scheduler = make_scheduler(max_model_len=12)
    scheduler.add_request(make_request("stop", 4, max_tokens=10, stop_token_ids=[7]))
    scheduler.add_request(make_request("len", 8, max_tokens=10))
    runner = FakeRunner(token_fn=lambda req_id, pos: 7 if pos == 6 else 3)
    tokens, reasons, _ = run_to_completion(scheduler, runner)
    assert tokens["stop"] == [3, 3, 7] and reasons["stop"] == "stop"
    assert len(tokens["len"]) == 4 and reasons["len"] == "length"
    _assert_all_blocks_free(scheduler)


def test_prompt_logprobs_outputs_emitted_mid_prefill() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=4)
    scheduler.add_request(make_request("a", 6, max_tokens=1, prompt_logprobs=0))
    so = scheduler.schedule()
    rows = LogprobsLists([[1]] * 4, [[-1.0]] * 4, [1] * 4)
    runner_output = ModelRunnerOutput(["a"], {}, prompt_logprobs={"a": rows})
    outs = scheduler.update_from_output(so, runner_output)
    assert outs.outputs[0].new_token_ids == [] and outs.outputs[0].new_prompt_logprobs is rows


def test_invalid_inputs() -> None:
    scheduler = make_scheduler(max_model_len=16)
    with pytest.raises(AssertionError):
        scheduler.add_request(make_request("long", 17))
    with pytest.raises(ValueError, match="max_model_len"):
        Scheduler(SchedulerConfig(), CacheConfig(block_size=4), num_blocks=2, max_model_len=16)


def test_core_does_not_import_torch() -> None:
    code = (
        "import sys, pagedllm.core.sched.scheduler, pagedllm.core.kv_cache_spec; "
        "assert 'torch' not in sys.modules, 'core imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preempted_in_same_step_leaves_no_uncomputed_cached_blocks() -> None:
    scheduler = make_scheduler(num_blocks=8, max_model_len=32, policy="priority",
                               long_prefill_token_threshold=8)
    runner = FakeRunner()
    background = make_request("background", 24, max_tokens=2, priority=1)
    scheduler.add_request(background)
    step(scheduler, runner)  # background 0..7
    scheduler.add_request(make_request("urgent", 8, max_tokens=2, priority=0))
    step(scheduler, runner)  # background 8..15, urgent 0..7: 2 blocks left
    # background takes both for 16..23 (registering blocks 4 and 5), then urgent's decode needs a
    # block: background is preempted before its blocks 4 and 5 were ever written.
    so, _ = step(scheduler, runner)
    assert so.finished_req_ids == {"background"} and set(so.num_scheduled_tokens) == {"urgent"}
    cache = scheduler.kv_cache_manager.block_pool.cached_block_hash_to_block
    assert all(h in cache for h in background.block_hashes[:4])
    assert not any(h in cache for h in background.block_hashes[4:])
    tokens, _, _ = run_to_completion(scheduler, runner)
    assert tokens["background"] == [25, 26]
    _assert_all_blocks_free(scheduler)
