"""The scheduler's LoRA rules without a model: at most max_loras distinct adapters among the
running requests, and prefix-cache keys that depend on the adapter."""

from __future__ import annotations

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.block_hash import make_block_hasher
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.lora.request import LoRARequest
from pagedllm.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams


def _lora(i: int) -> LoRARequest:
    return LoRARequest(f"a{i}", i, f"/adapters/a{i}")


def _request(i: int, lora: LoRARequest | None, hasher=None) -> Request:
    return Request(str(i), list(range(1, 33)), SamplingParams(max_tokens=4), max_tokens=4,
                   block_hasher=hasher, lora_request=lora)


def test_at_most_max_loras_adapters_run():
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=4096), CacheConfig(block_size=16),
                          num_blocks=64, max_model_len=64, max_loras=2)
    loras = [_lora(1), _lora(2), None, _lora(3), _lora(1), _lora(2)]
    for i, lora in enumerate(loras):
        scheduler.add_request(_request(i, lora))
    output = scheduler.schedule()
    scheduled = set(output.num_scheduled_tokens)
    # request 3 (a third adapter) waits; the base and the two running adapters go ahead of it
    assert scheduled == {"0", "1", "2", "4", "5"}
    adapters = {d.lora_request.lora_int_id for d in output.scheduled_new_reqs if d.lora_request}
    assert adapters == {1, 2}
    assert [r.request_id for r in scheduler.waiting] == ["3"]
    scheduler.finish_requests(["0", "4"], RequestStatus.FINISHED_ABORTED)
    assert "3" in scheduler.schedule().num_scheduled_tokens  # adapter 1 left: a slot is free


def test_block_hashes_depend_on_the_adapter():
    hasher = make_block_hasher(16)
    base = _request(0, None, hasher).block_hashes
    one = _request(1, _lora(1), hasher).block_hashes
    one_again = _request(2, _lora(1), hasher).block_hashes
    two = _request(3, _lora(2), hasher).block_hashes
    assert len(base) == 2
    assert one == one_again
    assert len({base[0], one[0], two[0]}) == 3 and len({base[1], one[1], two[1]}) == 3
