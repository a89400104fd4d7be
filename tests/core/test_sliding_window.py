"""Sliding window: blocks wholly before every future query's window are released as the request
advances, so a long generation holds a bounded number of blocks."""

from collections import Counter

import pytest

from pagedllm.core.kv_cache_manager import SKIPPED_BLOCK, KVCacheManager, common_sliding_window
from pagedllm.core.sched.scheduler import Scheduler
from pagedllm.request import Request
from pagedllm.utils.math import cdiv
from tests.core.core_helpers import FakeRunner, make_request, make_scheduler, run_to_completion


def _decode_bound(window: int, block_size: int) -> int:
    """Most blocks a decoding request holds: positions n - window + 1 .. n span at most this many
    blocks (the window minus the query itself, plus the query's block)."""
    return cdiv(window - 1, block_size) + 1


def _admit(kvm: KVCacheManager, request: Request) -> None:
    hits, num_hit = kvm.get_computed_blocks(request)
    assert kvm.allocate_slots(request, request.num_tokens - num_hit, num_hit, hits) is not None
    request.num_computed_tokens = request.num_tokens


def _decode(kvm: KVCacheManager, request: Request, num_steps: int) -> list[int]:
    """Decode num_steps tokens; the blocks held after each allocation."""
    held = []
    for _ in range(num_steps):
        request.append_output_token_ids(7)
        assert kvm.allocate_slots(request, 1) is not None
        held.append(kvm.get_num_held_blocks(request.request_id))
        request.num_computed_tokens += 1
    return held


def _assert_window_blocks_held(kvm: KVCacheManager, request: Request, window: int) -> None:
    """Exactly the blocks some query from num_computed_tokens on can read are held."""
    first_read = max(0, request.num_computed_tokens - window + 1) // kvm.block_size
    for i, block in enumerate(kvm.req_to_blocks[request.request_id]):
        assert (block is SKIPPED_BLOCK) == (i < first_read), (i, first_read)


def test_common_sliding_window() -> None:
    assert common_sliding_window([16, 16, 16]) == 16
    assert common_sliding_window([16, None]) is None  # Gemma 2/3 style: keep every block
    assert common_sliding_window([16, 8]) is None
    assert common_sliding_window([None, None]) is None
    assert common_sliding_window([]) is None


@pytest.mark.parametrize(("window", "block_size"), [(16, 4), (17, 4), (5, 4), (4, 4), (1, 4),
                                                    (16, 16), (3, 8)])
def test_long_decode_holds_bounded_blocks(window: int, block_size: int) -> None:
    kvm = KVCacheManager(num_blocks=64, block_size=block_size, max_model_len=256,
                         sliding_window=window)
    request = make_request("a", 5, max_tokens=200, block_size=block_size)
    _admit(kvm, request)
    held = _decode(kvm, request, 200)
    _assert_window_blocks_held(kvm, request, window)
    assert max(held) == _decode_bound(window, block_size)  # the bound is exact: reached
    assert len(kvm.req_to_blocks["a"]) == cdiv(request.num_tokens, block_size)  # aligned
    kvm.free(request)
    assert kvm.num_free_blocks == kvm.num_blocks and not kvm.req_to_blocks
    assert all(block.ref_cnt == 0 for block in kvm.block_pool.blocks)


def test_without_window_blocks_grow_linearly() -> None:
    kvm = KVCacheManager(num_blocks=64, block_size=4, max_model_len=256)
    request = make_request("a", 5, max_tokens=200)
    _admit(kvm, request)
    held = _decode(kvm, request, 200)
    assert held[-1] == cdiv(205, 4)


def test_released_blocks_stay_cached_and_shared_ones_are_not_double_freed() -> None:
    kvm = KVCacheManager(num_blocks=32, block_size=4, max_model_len=128, sliding_window=8)
    prompt = list(range(12))
    a = make_request("a", prompt, max_tokens=40)
    _admit(kvm, a)
    b = make_request("b", prompt + [99], max_tokens=40)
    _admit(kvm, b)  # hits a's 3 blocks: each now has 2 references
    assert b.num_computed_tokens == 13 and kvm.get_block_ids("b")[:3] == kvm.get_block_ids("a")
    _decode(kvm, a, 20)
    _decode(kvm, b, 20)
    shared = kvm.block_pool.get_cached_block(a.block_hashes[0])
    assert shared is not None and shared.ref_cnt == 0  # released by both, still cached
    assert shared in kvm.block_pool.free_block_queue
    kvm.free(a)
    kvm.free(b)
    assert kvm.num_free_blocks == kvm.num_blocks
    # A new request still hits the whole prompt, including blocks released mid-generation.
    c = make_request("c", prompt + [5], max_tokens=4)
    assert kvm.get_computed_blocks(c)[1] == 12


def _run(scheduler: Scheduler, runner: FakeRunner, prompts: dict[str, int], max_tokens: int):
    for name, n in prompts.items():
        scheduler.add_request(make_request(name, n, max_tokens=max_tokens))
    peak: dict[str, int] = {name: 0 for name in prompts}
    tokens: dict[str, list[int]] = {}
    preemptions = 0
    reused = False
    """Some block id listed twice in the runner's tables at once (two requests, or two positions
    of one request): a released block was reused while its owner still listed it."""
    for _ in range(2000):
        if not scheduler.has_unfinished_requests():
            break
        so = scheduler.schedule()
        kvm = scheduler.kv_cache_manager
        for req_id in so.num_scheduled_tokens:
            peak[req_id] = max(peak[req_id], kvm.get_num_held_blocks(req_id))
        outs = scheduler.update_from_output(so, runner.execute(so))
        for out in outs.outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        assert outs.scheduler_stats is not None
        preemptions += outs.scheduler_stats.num_preemptions
        listed = Counter(b for ids in runner.block_ids.values() for b in ids)
        reused |= max(listed.values(), default=0) > 1
    assert not scheduler.has_unfinished_requests()
    return tokens, peak, preemptions, reused


def test_concurrent_long_decodes_fit_a_cache_that_could_not_hold_them() -> None:
    # 3 requests x 46 tokens need 36 blocks of 4 without a window; the cache has 12.
    window = 8
    prompts = {"a": 6, "b": 6, "c": 6}

    windowed = make_scheduler(num_blocks=12, max_model_len=48, sliding_window=window)
    runner = FakeRunner(sliding_window=window)  # checks each request reads its own window
    _, peak, preemptions, reused = _run(windowed, runner, prompts, max_tokens=40)
    assert preemptions == 0 and max(peak.values()) == _decode_bound(window, 4)
    assert reused  # while still in the owners' tables: the runner saw no wrong token anyway
    assert windowed.kv_cache_manager.num_free_blocks == 12

    full = make_scheduler(num_blocks=12, max_model_len=48)
    _, _, full_preemptions, _ = _run(full, FakeRunner(), prompts, max_tokens=40)
    assert full_preemptions > 0


def test_preemption_and_resume_with_window() -> None:
    # 5 decoding requests need up to 5 x 3 blocks: the 12-block cache forces preemptions;
    # resumed requests recompute (or prefix-hit) their tokens and finish with the same output.
    window = 8
    prompts = {f"r{i}": 5 + i for i in range(5)}
    scheduler = make_scheduler(num_blocks=12, max_model_len=48, sliding_window=window)
    runner = FakeRunner(sliding_window=window)
    tokens, _, preemptions, _ = _run(scheduler, runner, prompts, max_tokens=30)
    assert preemptions > 0
    for name, n in prompts.items():
        assert tokens[name] == list(range(n + 1, n + 31))  # token = 1 + position
    kvm = scheduler.kv_cache_manager
    assert kvm.num_free_blocks == kvm.num_blocks and not kvm.req_to_blocks


def test_prefix_hit_on_blocks_released_by_a_running_request() -> None:
    window = 8
    scheduler = make_scheduler(num_blocks=32, max_model_len=64, sliding_window=window)
    runner = FakeRunner(sliding_window=window)
    prompt = list(range(100, 116))
    scheduler.add_request(make_request("a", prompt, max_tokens=30))
    for _ in range(12):  # a decodes past its prompt: its first blocks are released
        so = scheduler.schedule()
        scheduler.update_from_output(so, runner.execute(so))
    kvm = scheduler.kv_cache_manager
    assert kvm.req_to_blocks["a"][0] is SKIPPED_BLOCK
    b = make_request("b", prompt + [7, 8], max_tokens=30)
    scheduler.add_request(b)
    so = scheduler.schedule()
    scheduler.update_from_output(so, runner.execute(so))
    assert b.num_cached_tokens == 16  # hit a's whole prompt, released blocks revived
    tokens, _, _ = run_to_completion(scheduler, runner)
    assert tokens["b"] == list(range(20, 49))
    assert kvm.num_free_blocks == kvm.num_blocks
