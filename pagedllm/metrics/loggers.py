"""Stat loggers: receive the scheduler's stats and the front end's iteration stats after every
batch of engine outputs. One logs a throughput line periodically, one feeds Prometheus."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from pagedllm.logger import init_logger
from pagedllm.metrics.request_stats import IterationStats
from pagedllm.metrics.stats import SchedulerStats

logger = init_logger(__name__)


class StatLoggerBase(ABC):
    @abstractmethod
    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None, engine_idx: int = 0) -> None:
        """engine_idx: the data-parallel engine core the stats come from (0 with one core)."""

    def log(self) -> None:
        """Called periodically (about every few seconds) while the engine has work."""


class LoggingStatLogger(StatLoggerBase):
    """vLLM's periodic line: throughput, running/waiting requests, KV usage, prefix hit rate."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last_log = time.monotonic()
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._queries = 0
        self._hits = 0
        self._draft_tokens = 0
        self._accepted_tokens = 0
        self._last_scheduler_stats: dict[int, SchedulerStats] = {}
        """Each engine core's last report (the line sums them)."""

    def record(self, scheduler_stats: SchedulerStats | None,
               iteration_stats: IterationStats | None, engine_idx: int = 0) -> None:
        if iteration_stats is not None:
            self._prompt_tokens += iteration_stats.num_prompt_tokens
            self._generation_tokens += iteration_stats.num_generation_tokens
        if scheduler_stats is not None:
            self._last_scheduler_stats[engine_idx] = scheduler_stats
            if scheduler_stats.prefix_cache_stats is not None:
                self._queries += scheduler_stats.prefix_cache_stats.queries
                self._hits += scheduler_stats.prefix_cache_stats.hits
            spec = scheduler_stats.spec_decoding_stats
            if spec is not None:
                self._draft_tokens += spec.num_draft_tokens
                self._accepted_tokens += spec.num_accepted_tokens

    def log(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_log
        if elapsed < self.interval:
            return
        reports = list(self._last_scheduler_stats.values())
        if reports and (self._prompt_tokens or self._generation_tokens):
            hit_rate = 100.0 * self._hits / self._queries if self._queries else 0.0
            total_blocks = sum(s.num_total_blocks for s in reports)
            used_blocks = sum(s.num_total_blocks - s.num_free_blocks for s in reports)
            kv_usage = (used_blocks / total_blocks if total_blocks
                        else sum(s.kv_cache_usage for s in reports) / len(reports))
            logger.info(
                "Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, "
                "Prefix cache hit rate: %.1f%%",
                self._prompt_tokens / elapsed, self._generation_tokens / elapsed,
                sum(s.num_running_reqs for s in reports), sum(s.num_waiting_reqs for s in reports),
                100.0 * kv_usage, hit_rate,
            )
            if self._draft_tokens:
                logger.info("Speculative decoding: %d draft tokens, acceptance rate %.1f%%",
                            self._draft_tokens, 100.0 * self._accepted_tokens / self._draft_tokens)
        self._last_log = now
        self._prompt_tokens = self._generation_tokens = self._queries = self._hits = 0
        self._draft_tokens = self._accepted_tokens = 0
