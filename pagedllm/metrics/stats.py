"""Plain stats records the engine core produces each step (exported by the server's metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrefixCacheStats:
    queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    hits: int = 0
    """Of those, tokens found cached."""
    reset: bool = False


@dataclass
class SchedulerStats:
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of KV blocks in use (0..1)."""
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    prefix_cache_stats: PrefixCacheStats | None = None
    num_preemptions: int = 0
    """Preemptions during this step."""
    num_prompt_tokens: int = 0
    """Prompt tokens computed during this step (cache hits excluded)."""
    num_generation_tokens: int = 0
    """Tokens generated during this step."""
