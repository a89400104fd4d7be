import pytest

from pagedllm.core.block_pool import BlockPool, FreeBlockQueue, KVCacheBlock
from tests.core.core_helpers import make_request


def _ids(blocks: list[KVCacheBlock]) -> list[int]:
    return [b.block_id for b in blocks]


def test_free_queue_remove_from_middle() -> None:
    blocks = [KVCacheBlock(i) for i in range(4)]
    queue = FreeBlockQueue(blocks)
    queue.remove(blocks[2])
    assert _ids(queue.get_all_free_blocks()) == [0, 1, 3]
    assert queue.num_free_blocks == 3
    assert queue.popleft() is blocks[0]
    queue.append(blocks[2])
    assert _ids(queue.get_all_free_blocks()) == [1, 3, 2]
    assert blocks[0] not in queue and blocks[2] in queue


def test_ref_counts_and_double_free() -> None:
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(2)
    assert [b.ref_cnt for b in blocks] == [1, 1] and pool.get_num_free_blocks() == 2
    assert pool.get_usage() == 0.5
    pool.touch(blocks[:1])  # shared by a second request
    pool.free_blocks(blocks)
    assert blocks[0].ref_cnt == 1 and pool.get_num_free_blocks() == 3
    pool.free_blocks(blocks[:1])
    assert pool.get_num_free_blocks() == 4
    with pytest.raises(AssertionError):
        pool.free_blocks(blocks[:1])
    with pytest.raises(ValueError):
        pool.get_new_blocks(5)


def test_lru_eviction_order() -> None:
    pool = BlockPool(4)
    a = pool.get_new_blocks(2)
    b = pool.get_new_blocks(2)
    pool.free_blocks(reversed(a))  # a request frees its tail block first
    pool.free_blocks(reversed(b))
    assert _ids(pool.free_block_queue.get_all_free_blocks()) == [1, 0, 3, 2]
    assert _ids(pool.get_new_blocks(3)) == [1, 0, 3]


def test_cache_evicted_when_block_reused() -> None:
    pool = BlockPool(2)
    request = make_request("r", [1, 2, 3, 4, 5, 6, 7, 8])
    blocks = pool.get_new_blocks(2)
    pool.cache_full_blocks(request, blocks, 0, 2)
    h0, h1 = request.block_hashes
    assert pool.get_cached_block(h0) is blocks[0] and blocks[1].block_hash == h1
    pool.free_blocks(reversed(blocks))  # block 1 first: evicted first
    (reused,) = pool.get_new_blocks(1)
    assert reused is blocks[1] and reused.block_hash is None
    assert pool.get_cached_block(h1) is None and pool.get_cached_block(h0) is blocks[0]


def test_touch_free_cached_block() -> None:
    pool = BlockPool(3)
    request = make_request("r", [1, 2, 3, 4])
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(request, blocks, 0, 1)
    pool.free_blocks(blocks)
    assert pool.get_num_free_blocks() == 3
    hit = pool.get_cached_block(request.block_hashes[0])
    assert hit is blocks[0]
    pool.touch([hit])
    assert hit.ref_cnt == 1 and hit not in pool.free_block_queue
    assert pool.get_num_free_blocks() == 2
    assert hit not in pool.get_new_blocks(2)


def test_duplicate_hash_first_block_wins() -> None:
    pool = BlockPool(4)
    r1, r2 = make_request("a", [1, 2, 3, 4]), make_request("b", [1, 2, 3, 4])
    b1, b2 = pool.get_new_blocks(1), pool.get_new_blocks(1)
    pool.cache_full_blocks(r1, b1, 0, 1)
    pool.cache_full_blocks(r2, b2, 0, 1)
    assert pool.get_cached_block(r1.block_hashes[0]) is b1[0]
    assert b2[0].block_hash is None


def test_no_caching_and_reset() -> None:
    pool = BlockPool(2, enable_caching=False)
    request = make_request("r", [1, 2, 3, 4])
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(request, blocks, 0, 1)
    assert blocks[0].block_hash is None and not pool.cached_block_hash_to_block

    pool = BlockPool(2)
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(request, blocks, 0, 1)
    assert not pool.reset_prefix_cache()  # block in use
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache()
    assert pool.get_cached_block(request.block_hashes[0]) is None
