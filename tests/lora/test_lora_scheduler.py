"""The scheduler's LoRA rules without a model: at most max_loras distinct adapters among the
running requests, and prefix-cache keys that depend on the adapter."""

from __future__ import annotations

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.block_hash import make_block_hasher
from pagedllm.core.sched.output import ModelRunnerOutput
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.lora.request import LoRARequest
from pagedllm.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams


def _lora(i: int) -> LoRARequest:
    return LoRARequest(f"a{i}", i, f"/adapters/a{i}")


def _request(i: int, lora: LoRARequest | None, hasher=None) -> Request:
    return Request(str(i), list(range(1, 33)), SamplingParams(max_tokens=4), max_tokens=4,
                   block_hasher=hasher, lora_request=lora)


def _scheduler(max_loras: int, max_cpu_loras: int | None = None) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=4096), CacheConfig(block_size=16),
                     num_blocks=64, max_model_len=64, max_loras=max_loras,
                     max_cpu_loras=max_cpu_loras)


def _step(scheduler: Scheduler, loaded: list[int] = (), failed: dict[int, str] | None = None):
    """One schedule(); the workers report `loaded` / `failed` adapters with its output."""
    output = scheduler.schedule()
    runner = ModelRunnerOutput(list(output.num_scheduled_tokens),
                               {r: [] for r in output.num_scheduled_tokens},
                               lora_loaded=list(loaded), lora_failed=failed or {})
    scheduler.update_from_output(output, runner)
    return output


def test_at_most_max_loras_adapters_run():
    """Requests wait for their adapter's background load, then for a slot: at most max_loras
    distinct adapters among the running requests; the CPU copies are the scheduler's LRU of
    max_cpu_loras, and one no request uses is dropped to make room."""
    scheduler = _scheduler(max_loras=2)
    loras = [_lora(1), _lora(2), None, _lora(3), _lora(1), _lora(2)]
    for i, lora in enumerate(loras):
        scheduler.add_request(_request(i, lora))
    first = _step(scheduler, loaded=[1, 2])
    assert set(first.num_scheduled_tokens) == {"2"}  # the base request does not wait
    # room for two adapters in CPU memory, both used by waiting requests: a3 is not asked for
    assert [lora.lora_int_id for lora in first.lora_loads] == [1, 2]
    output = _step(scheduler)
    # request 3 (a third adapter) waits; the two loaded adapters' requests go ahead of it
    assert set(output.num_scheduled_tokens) == {"0", "1", "4", "5"}
    adapters = {d.lora_request.lora_int_id for d in output.scheduled_new_reqs}
    assert adapters == {1, 2} and not output.lora_loads
    assert [r.request_id for r in scheduler.waiting] == ["3"]
    scheduler.finish_requests(["0", "4"], RequestStatus.FINISHED_ABORTED)
    output = _step(scheduler, loaded=[3])  # adapter 1 is unused: its copy makes room for a3
    assert output.lora_drops == [1] and [lora.lora_int_id for lora in output.lora_loads] == [3]
    assert "3" not in output.num_scheduled_tokens  # (loaded during that step)
    assert "3" in _step(scheduler).num_scheduled_tokens
    stats = scheduler.make_stats().lora_stats
    assert stats.running_lora_adapters == ["a2", "a3"] and stats.max_lora == 2


def test_failed_load_aborts_the_adapters_requests():
    scheduler = _scheduler(max_loras=2)
    scheduler.add_request(_request(0, _lora(1)))
    scheduler.add_request(_request(1, None))
    _step(scheduler, failed={1: "LoRA 'a1': the file went away"})
    outputs = _step(scheduler)
    assert "0" not in scheduler.requests and "0" not in outputs.num_scheduled_tokens


def test_unload_drops_at_once_or_after_the_last_request():
    scheduler = _scheduler(max_loras=1, max_cpu_loras=2)
    scheduler.add_request(_request(0, _lora(1)))
    _step(scheduler, loaded=[1])
    assert scheduler.remove_lora(1)
    assert not _step(scheduler).lora_drops  # request 0 still runs under it
    scheduler.finish_requests(["0"], RequestStatus.FINISHED_ABORTED)
    assert _step(scheduler).lora_drops == [1]
    assert not scheduler.remove_lora(1)  # the workers no longer hold it


def test_block_hashes_depend_on_the_adapter():
    hasher = make_block_hasher(16)
    base = _request(0, None, hasher).block_hashes
    one = _request(1, _lora(1), hasher).block_hashes
    one_again = _request(2, _lora(1), hasher).block_hashes
    two = _request(3, _lora(2), hasher).block_hashes
    assert len(base) == 2
    assert one == one_again
    assert len({base[0], one[0], two[0]}) == 3 and len({base[1], one[1], two[1]}) == 3
