"""Per-request block lists over the block pool: prefix hits, slot allocation, freeing, and the
release of blocks that fell out of a sliding attention window."""

from __future__ import annotations

from collections.abc import Iterable

from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.metrics.stats import PrefixCacheStats
from pagedllm.request import Request
from pagedllm.utils.math import cdiv

SKIPPED_BLOCK = KVCacheBlock(-1)
"""Placeholder for a block released because it fell out of the attention window: it keeps the
request's block list aligned with token positions (block i holds tokens [i*B, (i+1)*B))."""


def common_sliding_window(windows: Iterable[int | None]) -> int | None:
    """The window shared by every attention layer, or None (some layer attends fully, the windows
    differ, or there are no layers): only then may blocks out of that window be released."""
    distinct = set(windows)
    if len(distinct) != 1:
        return None
    (window,) = distinct
    return window


class KVCacheManager:
    """Maps each request to the ordered list of KV blocks that hold its tokens.

    Block i of a request holds tokens [i*block_size, (i+1)*block_size). Counters:

    - req_to_blocks[req_id]: the request's blocks (prefix hits first, then allocated ones).
    - num_cached_blocks[req_id]: how many leading blocks of the request were already offered to
      the prefix cache (cache_full_blocks progress).
    - prefix_cache_stats: prompt tokens looked up / found at each request's (re)admission since
      the last make_prefix_cache_stats().

    sliding_window: set only when EVERY attention layer of the model attends over the same last
    `sliding_window` tokens (Mistral). Then, once a request's tokens are computed, its leading
    blocks that no current or future query can attend to are released (_remove_skipped_blocks),
    so a long generation holds at most cdiv(sliding_window - 1, block_size) + 1 blocks per
    decoding request. Models mixing windowed and full-attention layers (Gemma 2/3, Qwen2 with
    max_window_layers) pass None and keep every block: the full layers read all of them, and
    one block id spans all layers (a per-layer-group "hybrid" allocator is future work).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        max_model_len: int | None = None,
        sliding_window: int | None = None,
    ) -> None:
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.sliding_window = sliding_window
        self.max_model_len = max_model_len if max_model_len is not None else num_blocks * block_size
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (0..1)."""
        return self.block_pool.get_usage()

    def _reads_prefix_cache(self, request: Request) -> bool:
        # NOTE: prompt logprobs need logits at every prompt position, so no prefix can be skipped.
        return self.enable_caching and request.sampling_params.prompt_logprobs is None

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of the request: (blocks, num_computed_tokens).

        Never the whole sequence: the last token is always recomputed to get its logits, so at
        most (num_tokens - 1) // block_size blocks are returned. Does not take references; pass
        the blocks to allocate_slots.

        NOTE: with a sliding window only the hit's last blocks (inside the window) are needed, but
        the lookup still requires every block of the prefix to be cached: simple and correct
        (released blocks stay cached until evicted), at the cost of missing some hits.
        """
        if not self._reads_prefix_cache(request):
            return [], 0
        max_hit_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in request.block_hashes[:max_hit_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[int] | None:
        """Make room for num_new_tokens more tokens of request; None if blocks are short.

        Blocks layout after the call (C: computed before, H: new prefix hits, N: new tokens):

            | C C C C | H H H H | N N N N N N N . . |
            <- request.num_computed_tokens
                      <- num_new_computed_tokens
                                <- num_new_tokens -> (last block partly empty)

        On success, takes references on the hit blocks, appends the hits and the new blocks to the
        request's list, registers blocks that will be full after this step in the prefix cache,
        and returns the ids of the newly allocated blocks (hits excluded). With a sliding window,
        first releases the blocks the computed tokens have left behind (even if it then fails).
        """
        hits = new_computed_blocks or []
        req_id = request.request_id
        self._remove_skipped_blocks(request)
        first_allocation = req_id not in self.req_to_blocks
        req_blocks = self.req_to_blocks.get(req_id, [])
        num_computed = request.num_computed_tokens + num_new_computed_tokens
        num_tokens_need_slot = min(num_computed + num_new_tokens, self.max_model_len)
        num_required = cdiv(num_tokens_need_slot, self.block_size)
        num_new_blocks = max(0, num_required - len(req_blocks) - len(hits))
        # A hit block with ref_cnt 0 sits in the free queue: reviving it uses up a free block.
        num_revived = sum(1 for block in hits if block.ref_cnt == 0)
        if num_new_blocks + num_revived > self.block_pool.get_num_free_blocks():
            return None

        if hits:
            assert self.enable_caching, "prefix hits with caching disabled"
            self.block_pool.touch(hits)
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        req_blocks = self.req_to_blocks.setdefault(req_id, req_blocks)
        req_blocks.extend(hits)
        req_blocks.extend(new_blocks)
        if first_allocation and self._reads_prefix_cache(request):
            self._record_lookup(request.num_tokens, num_new_computed_tokens)
        self._cache_full_blocks(request, num_tokens_need_slot)
        return [block.block_id for block in new_blocks]

    def _remove_skipped_blocks(self, request: Request) -> None:
        """Release the request's blocks that lie wholly before its attention window.

        A query at position q attends keys k with q - window < k <= q, and every query from now
        on sits at q >= num_computed_tokens: keys below num_computed_tokens - window + 1 are never
        read again. Block i ends at position (i+1)*B - 1, so the first
        (num_computed_tokens - window + 1) // B blocks go. They are replaced by SKIPPED_BLOCK; the
        pool drops one reference each (a cached full block stays in the prefix cache, free and
        evictable, so later requests can still hit it).

        NOTE: the model runner keeps these block ids in this request's block table, and the pool
        may hand them to another request (or to this one, for a later position) that writes them
        in the very next step. That is safe: (1) this request never writes them again: its slot
        mapping only covers positions >= num_computed_tokens, in blocks >= num_computed_tokens //
        B; (2) every backend masks keys at positions <= q - window (torch_ref, and torch_sdpa's
        soft-cap path: -inf scores before softmax; torch_sdpa: a boolean SDPA mask), so whatever was
        written there gets softmax weight exactly 0, and 0 * a finite value is 0 (the cache is
        zero-filled and only ever holds K/V the model computed). Each query keeps at least its own
        key, so no softmax row is empty. tests/models/test_sliding_window_memory.py checks both
        backends bit for bit.
        """
        if self.sliding_window is None:
            return
        blocks = self.req_to_blocks.get(request.request_id)
        if not blocks:
            return
        num_skipped = (request.num_computed_tokens - self.sliding_window + 1) // self.block_size
        released: list[KVCacheBlock] = []
        # Walk back from the last skippable block to the first one already released.
        for i in range(min(num_skipped, len(blocks)) - 1, -1, -1):
            if blocks[i] is SKIPPED_BLOCK:
                break
            released.append(blocks[i])
            blocks[i] = SKIPPED_BLOCK
        # Later positions first, like free(): the most recent tokens are evicted first.
        self.block_pool.free_blocks(released)

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        if not self.enable_caching:
            return
        req_id = request.request_id
        num_full = min(num_tokens // self.block_size, len(request.block_hashes))
        num_cached = self.num_cached_blocks.get(req_id, 0)
        if num_full > num_cached:
            blocks = self.req_to_blocks[req_id]
            self.block_pool.cache_full_blocks(request, blocks, num_cached, num_full)
            self.num_cached_blocks[req_id] = num_full

    def _record_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_stats.queries += num_tokens
        self.prefix_cache_stats.hits += num_hit_tokens

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first, so its last blocks are evicted first."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        num_cached = self.num_cached_blocks.pop(request.request_id, 0)
        # NOTE: blocks enter the prefix cache when their slots are allocated, before the step that
        # computes them runs. A request freed before that (preempted right after being scheduled
        # in the same step) must not leave behind hashes of blocks whose K/V are never written.
        # Such blocks were allocated by this request alone: prefix hits lie below
        # num_computed_tokens.
        # Blocks already released out of the sliding window are placeholders: not freed twice.
        held = [block for block in blocks if block is not SKIPPED_BLOCK]
        for block in blocks[request.num_computed_tokens // self.block_size : num_cached]:
            if block is not SKIPPED_BLOCK:
                self.block_pool.uncache_block(block)
        self.block_pool.free_blocks(reversed(held))

    def get_block_ids(self, req_id: str) -> list[int]:
        """The request's block ids by position; -1 where a block was released out of the window
        (never at admission, when nothing has been computed yet)."""
        return [block.block_id for block in self.req_to_blocks.get(req_id, [])]

    def get_num_held_blocks(self, req_id: str) -> int:
        """Blocks the request holds a reference on (released window blocks excluded)."""
        return sum(1 for block in self.req_to_blocks.get(req_id, []) if block is not SKIPPED_BLOCK)

    def make_prefix_cache_stats(self) -> PrefixCacheStats | None:
        """Stats since the last call (then reset); None when prefix caching is off."""
        if not self.enable_caching:
            return None
        stats, self.prefix_cache_stats = self.prefix_cache_stats, PrefixCacheStats()
        return stats

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; False (nothing done) while blocks are in use."""
        ok = self.block_pool.reset_prefix_cache()
        if ok:
            self.prefix_cache_stats.reset = True
        return ok
