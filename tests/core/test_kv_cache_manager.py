from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.request import Request
from tests.core.core_helpers import make_request


def _admit(kvm: KVCacheManager, request: Request, num_new: int | None = None) -> list[int] | None:
    """Lookup + allocate as the scheduler does for a waiting request."""
    hits, num_hit = kvm.get_computed_blocks(request)
    num_new = request.num_tokens - num_hit if num_new is None else num_new
    new_ids = kvm.allocate_slots(request, num_new, num_hit, hits)
    if new_ids is not None:
        request.num_computed_tokens = num_hit + num_new
    return new_ids


def test_allocate_and_free() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    request = make_request("a", 10)
    assert _admit(kvm, request) == [0, 1, 2]
    assert kvm.num_free_blocks == 5 and kvm.usage == 3 / 8
    # Decode tokens 11 and 12 fit in block 2; token 13 needs a new block.
    for token, expected in [(1, []), (2, []), (3, [3])]:
        request.append_output_token_ids(token)
        assert kvm.allocate_slots(request, 1) == expected
        request.num_computed_tokens += 1
    assert kvm.get_block_ids("a") == [0, 1, 2, 3]
    kvm.free(request)
    assert kvm.num_free_blocks == 8 and kvm.get_block_ids("a") == []
    # Freed tail first: the request's last block is evicted first.
    free = [b.block_id for b in kvm.block_pool.free_block_queue.get_all_free_blocks()]
    assert free[-4:] == [3, 2, 1, 0]


def test_never_full_prompt_hit() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    first = make_request("a", list(range(8)))
    _admit(kvm, first)
    assert len(kvm.block_pool.cached_block_hash_to_block) == 2
    second = make_request("b", list(range(8)))
    blocks, num_hit = kvm.get_computed_blocks(second)
    assert num_hit == 4 and blocks == kvm.req_to_blocks["a"][:1]
    third = make_request("c", list(range(9)))
    assert kvm.get_computed_blocks(third)[1] == 8


def test_prefix_hit_shares_blocks_and_counts_stats() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    _admit(kvm, make_request("a", list(range(10))))
    b = make_request("b", list(range(8)) + [99, 98, 97])
    assert _admit(kvm, b) == [3]
    assert kvm.get_block_ids("b")[:2] == kvm.get_block_ids("a")[:2]
    assert [blk.ref_cnt for blk in kvm.req_to_blocks["b"]] == [2, 2, 1]
    stats = kvm.make_prefix_cache_stats()
    assert stats is not None and (stats.queries, stats.hits) == (21, 8)
    stats = kvm.make_prefix_cache_stats()
    assert stats is not None and (stats.queries, stats.hits) == (0, 0)


def test_allocate_fails_cleanly() -> None:
    kvm = KVCacheManager(num_blocks=3, block_size=4, max_model_len=12)
    _admit(kvm, make_request("a", 8))
    request = make_request("b", 8)
    assert _admit(kvm, request) is None
    assert kvm.num_free_blocks == 1 and "b" not in kvm.req_to_blocks
    assert kvm.make_prefix_cache_stats().queries == 8  # type: ignore[union-attr]


def test_revived_hit_blocks_count_against_free_blocks() -> None:
    kvm = KVCacheManager(num_blocks=3, block_size=4, max_model_len=16)
    a = make_request("a", list(range(9)))
    _admit(kvm, a)
    kvm.free(a)  # 2 cached blocks now sit in the free queue
    ok = make_request("b", list(range(8)) + [50, 51, 52, 53])
    assert _admit(kvm, ok) == [2]  # 2 revived + 1 new = 3 free
    kvm.free(ok)
    too_big = make_request("c", list(range(8)) + [60, 61, 62, 63, 64])
    hits, num_hit = kvm.get_computed_blocks(too_big)
    assert num_hit == 8
    assert kvm.allocate_slots(too_big, 5, num_hit, hits) is None  # 2 revived + 2 new > 3
    assert kvm.num_free_blocks == 3 and all(blk.ref_cnt == 0 for blk in hits)


def test_decode_caches_block_when_full() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    request = make_request("a", 3)
    _admit(kvm, request)
    assert not kvm.block_pool.cached_block_hash_to_block
    request.append_output_token_ids(7)  # block 0 now full; its token 3 is computed next step
    kvm.allocate_slots(request, 1)
    assert kvm.block_pool.get_cached_block(request.block_hashes[0]) is kvm.req_to_blocks["a"][0]


def test_prompt_logprobs_skip_prefix_hits() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    _admit(kvm, make_request("a", list(range(9))))
    request = make_request("b", list(range(9)), prompt_logprobs=1)
    assert kvm.get_computed_blocks(request) == ([], 0)


def test_caching_disabled() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False, max_model_len=32)
    _admit(kvm, make_request("a", list(range(9))))
    assert not kvm.block_pool.cached_block_hash_to_block
    assert kvm.get_computed_blocks(make_request("b", list(range(9)))) == ([], 0)
    assert kvm.make_prefix_cache_stats() is None


def test_free_before_compute_uncaches_unwritten_blocks() -> None:
    kvm = KVCacheManager(num_blocks=8, block_size=4, max_model_len=32)
    request = make_request("a", list(range(10)))
    kvm.allocate_slots(request, 4)
    request.num_computed_tokens = 4  # step 1 ran: block 0 written
    kvm.allocate_slots(request, 6)  # step 2 scheduled: block 1 registered, not yet written
    kvm.free(request)
    cache = kvm.block_pool.cached_block_hash_to_block
    assert request.block_hashes[0] in cache and request.block_hashes[1] not in cache
