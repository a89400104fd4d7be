"""The pool of KV blocks: allocation, ref counts, LRU free list and the prefix-cache map.

No block is reserved: block ids 0 .. num_blocks-1 are all allocatable.

A block is in exactly one of these states:

    in use         ref_cnt > 0, not in the free queue (may or may not have a hash)
    free, cached   ref_cnt == 0, in the free queue, has a hash: a prefix hit can revive it
    free, empty    ref_cnt == 0, in the free queue, no hash

Allocation pops from the head of the free queue (least recently freed first); when the popped
block still carries a hash, that hash is evicted from the cache map.
"""

from __future__ import annotations

from collections.abc import Iterable

from pagedllm.request import Request


class KVCacheBlock:
    """One block of the paged KV cache (the same block id in every layer)."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        """Requests currently using this block (0: the block is in the free queue)."""
        self.block_hash: int | None = None
        """Chained hash of the block's tokens while it is registered in the prefix cache."""
        self.prev_free: KVCacheBlock | None = None
        self.next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


class FreeBlockQueue:
    """Doubly linked list of free blocks in eviction order (head: evicted first).

    Unlike a deque, it removes a block from the middle in O(1) (a prefix hit on a free block).
    Two sentinel nodes make every real block have both neighbours.
    """

    def __init__(self, blocks: Iterable[KVCacheBlock]) -> None:
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        """Blocks currently in the queue."""
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVCacheBlock:
        block = self._head.next_free
        if block is None or block is self._tail:
            raise ValueError("no free blocks")
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"{block} is not in the free queue"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        assert block.prev_free is None and block.next_free is None, f"{block} already queued"
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free_blocks += 1

    def __contains__(self, block: KVCacheBlock) -> bool:
        return block.prev_free is not None

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        """Free blocks from head (next to be evicted) to tail; O(n), for tests and debugging."""
        blocks = []
        node = self._head.next_free
        while node is not None and node is not self._tail:
            blocks.append(node)
            node = node.next_free
        return blocks


class BlockPool:
    """All KV blocks, their ref counts, the LRU free queue and the hash -> block cache map.

    With enable_caching False, blocks never get hashes and cache_full_blocks is a no-op.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_block_queue = FreeBlockQueue(self.blocks)
        self.cached_block_hash_to_block: dict[int, KVCacheBlock] = {}
        """Prefix cache: hash -> the one block registered under it (in use or free)."""

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take num_blocks blocks from the head of the free queue (ref_cnt 1 each), evicting any
        cached hash they still carry."""
        if num_blocks > self.free_block_queue.num_free_blocks:
            raise ValueError(
                f"cannot allocate {num_blocks} blocks, {self.get_num_free_blocks()} free"
            )
        blocks = []
        for _ in range(num_blocks):
            block = self.free_block_queue.popleft()
            assert block.ref_cnt == 0
            self.uncache_block(block)
            block.ref_cnt = 1
            blocks.append(block)
        return blocks

    def uncache_block(self, block: KVCacheBlock) -> None:
        """Remove the block's hash from the prefix cache (no-op if it has none)."""
        if block.block_hash is None:
            return
        if self.cached_block_hash_to_block.get(block.block_hash) is block:
            del self.cached_block_hash_to_block[block.block_hash]
        block.block_hash = None

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the free queue's tail in the
        given order (so pass a request's blocks reversed: its tail blocks get evicted first)."""
        for block in ordered_blocks:
            assert block.ref_cnt > 0, f"double free of {block}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_block_queue.append(block)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, reviving free ones out of the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def cache_full_blocks(
        self,
        request: Request,
        blocks: list[KVCacheBlock],
        num_cached_blocks: int,
        num_full_blocks: int,
    ) -> None:
        """Register blocks[num_cached_blocks:num_full_blocks] of request under
        request.block_hashes (same indices). Blocks already hashed (prefix hits) are skipped; if
        another block already holds a hash, the first one stays registered and this one is not
        cached."""
        if not self.enable_caching:
            return
        assert num_full_blocks <= min(len(blocks), len(request.block_hashes))
        for i in range(num_cached_blocks, num_full_blocks):
            block = blocks[i]
            if block.block_hash is not None:
                continue
            block_hash = request.block_hashes[i]
            if block_hash in self.cached_block_hash_to_block:
                continue
            block.block_hash = block_hash
            self.cached_block_hash_to_block[block_hash] = block

    def get_cached_block(self, block_hash: int) -> KVCacheBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    def get_num_free_blocks(self) -> int:
        """Blocks allocatable now (free, cached or not)."""
        return self.free_block_queue.num_free_blocks

    def get_usage(self) -> float:
        """Fraction of blocks held by requests (0..1)."""
        return 1.0 - self.get_num_free_blocks() / self.num_blocks

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if self.get_num_free_blocks() != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached_block_hash_to_block.clear()
        return True
