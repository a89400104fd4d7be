"""Randomized run under a tiny cache: invariants hold every step, every request completes."""

import random
from collections import Counter

import pytest

from pagedllm.core.kv_cache_manager import SKIPPED_BLOCK
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.request import RequestStatus
from tests.core.core_helpers import FakeRunner, make_request, make_scheduler, step


def _check_invariants(scheduler: Scheduler) -> None:
    kvm = scheduler.kv_cache_manager
    holders = Counter(b.block_id for blocks in kvm.req_to_blocks.values() for b in blocks)
    for block in kvm.block_pool.blocks:
        assert block.ref_cnt == holders[block.block_id], block
        assert (block in kvm.block_pool.free_block_queue) == (block.ref_cnt == 0)
    assert set(kvm.req_to_blocks) == {r.request_id for r in scheduler.running}
    for request in scheduler.running:
        assert request.num_computed_tokens <= request.num_tokens
        assert len(kvm.req_to_blocks[request.request_id]) * 4 >= request.num_computed_tokens
        # Released window blocks: a leading run, none a future query can read.
        skipped = [b is SKIPPED_BLOCK for b in kvm.req_to_blocks[request.request_id]]
        assert skipped == sorted(skipped, reverse=True)
        if kvm.sliding_window is not None:
            first_read = max(0, request.num_computed_tokens - kvm.sliding_window + 1) // 4
            assert sum(skipped) <= first_read
    for request in scheduler.waiting:
        assert request.num_computed_tokens == 0
        assert request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
    cache = kvm.block_pool.cached_block_hash_to_block
    assert all(block.block_hash == h for h, block in cache.items())


def _step(scheduler: Scheduler, runner: FakeRunner, produced: Counter[str]) -> int:
    """One step; counts tokens per request and prefix hits (under "hit-tokens")."""
    _, outs = step(scheduler, runner)
    for out in outs.outputs:
        produced[out.request_id] += len(out.new_token_ids)
    _check_invariants(scheduler)
    stats = outs.scheduler_stats
    assert stats is not None and stats.prefix_cache_stats is not None
    produced["hit-tokens"] += stats.prefix_cache_stats.hits
    return stats.num_preemptions


@pytest.mark.parametrize("sliding_window", [None, 10])
@pytest.mark.parametrize("seed", range(4))
def test_random_workload(seed: int, sliding_window: int | None) -> None:
    rng = random.Random(seed)
    scheduler = make_scheduler(num_blocks=10, max_model_len=32, max_num_batched_tokens=12,
                               max_num_seqs=4, policy=rng.choice(["fcfs", "priority"]),
                               sliding_window=sliding_window)
    runner = FakeRunner(sliding_window=sliding_window)
    shared = list(range(500, 508))
    expected: dict[str, int] = {}
    aborted: set[str] = set()
    preemptions = 0
    produced: Counter[str] = Counter()
    for i in range(40):
        if rng.random() < 0.6:
            prompt = (shared if rng.random() < 0.5 else []) + [rng.randrange(50) for _ in
                                                                range(rng.randint(1, 12))]
            name = f"r{i}"
            expected[name] = rng.randint(1, 10)
            scheduler.add_request(make_request(name, prompt, max_tokens=expected[name],
                                               priority=rng.randrange(3)))
        if rng.random() < 0.05 and scheduler.running:
            victim = rng.choice(scheduler.running).request_id
            scheduler.finish_requests(victim, RequestStatus.FINISHED_ABORTED)
            aborted.add(victim)
        preemptions += _step(scheduler, runner, produced)
    for _ in range(500):
        if not scheduler.has_unfinished_requests():
            break
        preemptions += _step(scheduler, runner, produced)
    assert not scheduler.has_unfinished_requests()
    assert preemptions > 0  # the cache is small enough to force some
    assert produced["hit-tokens"] > 0  # and prefix hits happen (checked by the runner's KV)
    for name, max_tokens in expected.items():
        if name not in aborted:
            assert produced[name] == max_tokens, name
    kvm = scheduler.kv_cache_manager
    assert kvm.num_free_blocks == kvm.num_blocks
