"""EncoderCacheManager: the scheduler's accounting of the vision encoder's outputs (vLLM v1's
EncoderCacheManager semantics), keyed by each image's content hash.

The worker keeps one tensor of embeddings per image hash (worker/encoder_cache.py); this class
decides which of them may exist. Its budget, `cache_size`, is counted in embedding tokens (an
image's placeholder count = its encoder output rows). An entry is

- referenced while a running request has scheduled a chunk that overlaps one of the image's
  placeholder runs and has not yet computed the last of them (the rows are still to be read);
- freeable once no request references it: it stays cached (so a later request with the same
  image, or a preempted request on its return, reuses it without running the encoder) until
  room is needed, then evicted oldest-freeable first and named in the next SchedulerOutput's
  `free_encoder_mm_hashes` so the worker drops the tensor.

Before a chunk that reaches an image's placeholders is scheduled, `schedule_inputs` makes sure
the image is cached (a hit: just referenced) or fits (evicting freeable entries); when it does
not fit, the chunk is cut before the image and the request waits for room. An image larger than
the whole budget could never run: the input processor refuses such a prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class _Feature(Protocol):
    identifier: str
    offset: int
    length: int

    @property
    def end(self) -> int: ...


@dataclass
class EncoderInputsPlan:
    """What schedule_inputs decided for one request's chunk."""

    num_new_tokens: int
    """The chunk's length, cut before the first image that did not fit (maybe 0)."""
    to_encode: list[int] = field(default_factory=list)
    """Indices (into the request's features) of the images whose encoder output this chunk
    needs and no cache holds: the worker runs the encoder on them."""
    referenced: list[str] = field(default_factory=list)
    """Hashes this plan started referencing (undone by `cancel` if the chunk is not scheduled
    after all, e.g. its KV blocks did not fit)."""


class EncoderCacheManager:
    def __init__(self, cache_size: int) -> None:
        if cache_size < 1:
            raise ValueError(f"encoder_cache_size must be >= 1, got {cache_size}")
        self.cache_size = cache_size
        self.num_free_slots = cache_size
        """Embedding tokens held by no entry."""
        self.num_freeable_slots = cache_size
        """Free slots plus those of entries no request references (reclaimable by eviction)."""
        self.cached: dict[str, set[str]] = {}
        """image hash -> ids of the requests referencing its entry (empty: freeable)."""
        self.sizes: dict[str, int] = {}
        """image hash -> its entry's embedding tokens."""
        self.freeable: OrderedDict[str, None] = OrderedDict()
        """Unreferenced entries, oldest first (evicted in this order)."""
        self.held_by: dict[str, set[str]] = {}
        """request id -> the hashes it references."""
        self.freed: list[str] = []
        """Hashes evicted since the last take_freed (the worker drops their tensors)."""
        self.num_hits = 0
        """Images a chunk needed that were already cached (no encoder run)."""
        self.num_waits = 0
        """Chunks cut short (or not scheduled) because an image's output did not fit."""

    # ---- queries ------------------------------------------------------------------------------

    @property
    def num_used_slots(self) -> int:
        return self.cache_size - self.num_free_slots

    def take_freed(self) -> list[str]:
        freed, self.freed = self.freed, []
        return freed

    # ---- scheduling ---------------------------------------------------------------------------

    def schedule_inputs(self, req_id: str, features: Sequence[_Feature], start: int,
                        num_new_tokens: int, allow_partial: bool = True) -> EncoderInputsPlan:
        """Make room for the images that the chunk [start, start + num_new_tokens) of request
        req_id reaches. Cached images are referenced at once (so no eviction below takes them);
        new ones are allocated here too, evicting freeable entries as needed. The first image
        that does not fit cuts the chunk before its first placeholder (allow_partial False, as
        without chunked prefill: the chunk becomes 0). Call `cancel` with the plan if the chunk
        is not scheduled after all."""
        plan = EncoderInputsPlan(num_new_tokens)
        held = self.held_by.setdefault(req_id, set())
        end = start + num_new_tokens
        for index, feature in enumerate(features):
            if feature.offset >= end:
                break  # (features are in prompt order)
            if feature.end <= start:
                continue  # already in the KV cache
            key = feature.identifier
            if key in held:
                continue  # referenced by an earlier chunk, or this image earlier in the prompt
            if key in self.cached:
                self._reference(key, req_id)
                plan.referenced.append(key)
                self.num_hits += 1
                continue
            if not self._make_room(feature.length):
                self.num_waits += 1
                plan.num_new_tokens = feature.offset - start if allow_partial else 0
                break
            self.cached[key] = set()
            self.sizes[key] = feature.length
            self.num_free_slots -= feature.length
            self.num_freeable_slots -= feature.length
            self._reference(key, req_id, new=True)
            plan.referenced.append(key)
            plan.to_encode.append(index)
        if plan.num_new_tokens == 0:
            self.cancel(req_id, plan)
        return plan

    def cancel(self, req_id: str, plan: EncoderInputsPlan) -> None:
        """Undo a plan's references (the chunk was not scheduled): its entries become freeable
        again. A new entry stays allocated but unreferenced, so it is evicted before any other;
        the worker, which never encoded it, ignores its eviction."""
        for key in plan.referenced:
            self._release(key, req_id, newest=False)
        plan.referenced = []

    def release_consumed(self, req_id: str, features: Sequence[_Feature],
                         num_computed_tokens: int) -> None:
        """Drop the request's references to the images whose placeholders (every run of them:
        an image may appear twice in a prompt) are all computed: the rows are in the KV cache
        now, the entries become freeable (still cached for other requests)."""
        held = self.held_by.get(req_id)
        if not held:
            return
        last_end: dict[str, int] = {}
        for feature in features:
            last_end[feature.identifier] = max(last_end.get(feature.identifier, 0), feature.end)
        for key in [k for k in held if last_end.get(k, 0) <= num_computed_tokens]:
            self._release(key, req_id)

    def free(self, req_id: str) -> None:
        """The request finished, was aborted or preempted: drop all of its references."""
        for key in list(self.held_by.get(req_id, ())):
            self._release(key, req_id)
        self.held_by.pop(req_id, None)

    # ---- internals ----------------------------------------------------------------------------

    def _reference(self, key: str, req_id: str, new: bool = False) -> None:
        refs = self.cached[key]
        if not refs and not new:  # freeable until now
            del self.freeable[key]
            self.num_freeable_slots -= self.sizes[key]
        refs.add(req_id)
        self.held_by.setdefault(req_id, set()).add(key)

    def _release(self, key: str, req_id: str, newest: bool = True) -> None:
        refs = self.cached.get(key)
        held = self.held_by.get(req_id)
        if held is not None:
            held.discard(key)
        if refs is None or req_id not in refs:
            return
        refs.discard(req_id)
        if not refs:
            self.freeable[key] = None
            if not newest:
                self.freeable.move_to_end(key, last=False)
            self.num_freeable_slots += self.sizes[key]

    def _make_room(self, num_tokens: int) -> bool:
        """Evict freeable entries (oldest first) until num_tokens slots are free; evict nothing
        and return False if even evicting every freeable entry would not make room."""
        if num_tokens > self.num_freeable_slots:
            return False
        while self.num_free_slots < num_tokens:
            key, _ = self.freeable.popitem(last=False)
            del self.cached[key]
            self.num_free_slots += self.sizes.pop(key)
            self.freed.append(key)
        return True
