"""DPRouter: which data-parallel engine core a request goes to, and the books behind that choice.

It owns, for every live engine-core request, the core that holds it, so aborts and stop-string
finishes reach that core and a dead core's requests can be named. Plain data, no I/O and no
threads of its own: the DP client calls it under its lock.

Load score of a core (lower is better), in "running request" units:

    score = running + WAITING_WEIGHT * waiting + KV_WEIGHT * kv_cache_usage

`waiting` (routed, no output yet) and `running` (has produced output, not finished) are the front
end's own exact counts, up to date at every decision; the cores' reports (their scheduler stats,
sent with every step's outputs) lag by a step, so only the KV usage comes from them. A waiting
request weighs more because it adds a whole prefill and queueing delay; a full KV cache counts
like two waiting requests, because the next request there may wait for blocks or preempt.

Prefix-aware routing: the chained hashes of a prompt's first full blocks (block_size tokens each,
at most MAX_PREFIX_BLOCKS) remember the core each was last routed to. A new request looks up its
longest remembered block prefix; it goes to that core while

    score(that core) <= (1 + PREFIX_IMBALANCE) * min_score + PREFIX_SLACK

i.e. while the core is at most a quarter plus one waiting request busier than the least loaded
one, and to the least loaded core otherwise (which then becomes the prefix's core). The cached
prefix saves its prefill; past that bound the queueing delay costs more than the prefill saved.
The bound also keeps a flood of requests with one shared system prompt spread over every core.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

WAITING_WEIGHT = 4.0
KV_WEIGHT = 8.0
PREFIX_IMBALANCE = 0.25
PREFIX_SLACK = WAITING_WEIGHT
MAX_PREFIX_BLOCKS = 32
"""Blocks of a prompt hashed for routing (512 tokens at block size 16): enough to tell
conversations apart, and it bounds the cost of a decision."""
MAX_REMEMBERED_PREFIXES = 1 << 16


@dataclass
class CoreLoad:
    waiting: int = 0
    """Requests routed here that have produced no output yet."""
    running: int = 0
    """Requests routed here that have produced output and are unfinished."""
    kv_cache_usage: float = 0.0
    """The core's last reported fraction of KV blocks in use."""
    alive: bool = True
    routed: int = 0
    """Requests routed here since start (for logs and tests)."""

    @property
    def score(self) -> float:
        return self.running + WAITING_WEIGHT * self.waiting + KV_WEIGHT * self.kv_cache_usage


@dataclass
class _Owned:
    core: int
    started: bool = False


class NoLiveCoreError(RuntimeError):
    """Every engine core has died."""


class DPRouter:
    def __init__(self, num_cores: int, block_size: int, prefix_aware: bool = True) -> None:
        assert num_cores >= 1 and block_size >= 1
        self.loads = [CoreLoad() for _ in range(num_cores)]
        self.block_size = block_size
        self.prefix_aware = prefix_aware
        self._owners: dict[str, _Owned] = {}
        self._prefix_core: OrderedDict[int, int] = OrderedDict()
        """Chained block hash -> the core that block prefix last went to (LRU order)."""

    # ---- routing ------------------------------------------------------------------------------

    def route(self, request_id: str, prompt_token_ids: list[int],
              lora_name: str | None = None) -> int:
        """Pick the core for a new request and record it as waiting there."""
        least = self._least_loaded()
        hashes = self._block_hashes(prompt_token_ids, lora_name) if self.prefix_aware else []
        core = least
        matched = self._longest_match(hashes)
        if matched is not None and self._close_enough(matched, least):
            core = matched
        for h in hashes:
            self._prefix_core[h] = core
            self._prefix_core.move_to_end(h)
        while len(self._prefix_core) > MAX_REMEMBERED_PREFIXES:
            self._prefix_core.popitem(last=False)
        self._owners[request_id] = _Owned(core)
        self.loads[core].waiting += 1
        self.loads[core].routed += 1
        return core

    def _least_loaded(self) -> int:
        live = [i for i, load in enumerate(self.loads) if load.alive]
        if not live:
            raise NoLiveCoreError("every data-parallel engine core has died")
        # ties go to the core with fewer requests routed so far, so idle cores take turns
        return min(live, key=lambda i: (self.loads[i].score, self.loads[i].routed, i))

    def _close_enough(self, core: int, least: int) -> bool:
        best = self.loads[least].score
        return self.loads[core].score <= (1 + PREFIX_IMBALANCE) * best + PREFIX_SLACK

    def _block_hashes(self, token_ids: list[int], lora_name: str | None) -> list[int]:
        """Chained hashes of the prompt's full blocks (a block's hash covers all before it)."""
        size = self.block_size
        num_blocks = min(len(token_ids) // size, MAX_PREFIX_BLOCKS)
        hashes, parent = [], hash(("pagedllm-dp", lora_name))
        for b in range(num_blocks):
            parent = hash((parent, tuple(token_ids[b * size:(b + 1) * size])))
            hashes.append(parent)
        return hashes

    def _longest_match(self, hashes: list[int]) -> int | None:
        for h in reversed(hashes):
            core = self._prefix_core.get(h)
            if core is not None and self.loads[core].alive:
                return core
        return None

    # ---- bookkeeping ---------------------------------------------------------------------------

    def owner(self, request_id: str) -> int | None:
        owned = self._owners.get(request_id)
        return None if owned is None else owned.core

    def started(self, request_ids: Iterable[str]) -> None:
        """These requests produced output: waiting -> running."""
        for request_id in request_ids:
            owned = self._owners.get(request_id)
            if owned is not None and not owned.started:
                owned.started = True
                load = self.loads[owned.core]
                load.waiting -= 1
                load.running += 1

    def release(self, request_ids: Iterable[str]) -> dict[int, list[str]]:
        """Forget finished / aborted requests; those still known, grouped by their core."""
        by_core: dict[int, list[str]] = {}
        for request_id in request_ids:
            owned = self._owners.pop(request_id, None)
            if owned is None:
                continue
            load = self.loads[owned.core]
            if owned.started:
                load.running -= 1
            else:
                load.waiting -= 1
            by_core.setdefault(owned.core, []).append(request_id)
        return by_core

    def report(self, core: int, kv_cache_usage: float) -> None:
        self.loads[core].kv_cache_usage = kv_cache_usage

    def core_died(self, core: int) -> list[str]:
        """Mark the core dead (nothing is routed to it again); its requests, forgotten."""
        self.loads[core].alive = False
        lost = [r for r, owned in self._owners.items() if owned.core == core]
        self.release(lost)
        return lost

    def core_revived(self, core: int) -> None:
        """A restarted core: routed to again, from an empty load (its cache is empty too)."""
        self.loads[core] = CoreLoad()

    @property
    def num_alive(self) -> int:
        return sum(load.alive for load in self.loads)
