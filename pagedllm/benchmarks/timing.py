"""When each output token of a benchmark run arrived, so decode speed comes from the tokens' own
timestamps rather than from the difference of two separately timed runs (which goes negative
when a long prompt's prefill dominates and varies from run to run)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class TimedRun:
    """One run of a batch of requests."""

    elapsed_s: float
    """Wall time of the whole run, submission to the last result."""
    token_times: list[list[float]] | None = None
    """Per request (in prompt order), the seconds from the run's start at which each of its output
    tokens reached the caller; None when the engine cannot report them."""


class TokenClock:
    """Stamps tokens as a runner sees them arrive; started when the run is submitted."""

    def __init__(self, num_requests: int) -> None:
        self.start = time.perf_counter()
        self.times: list[list[float]] = [[] for _ in range(num_requests)]

    def mark(self, row: int, count: int = 1) -> None:
        """`count` tokens of request `row` arrived now (several at once: one engine step made
        them, e.g. a speculative step)."""
        now = time.perf_counter() - self.start
        self.times[row].extend([now] * count)

    def counts(self) -> list[int]:
        return [len(t) for t in self.times]

    def finish(self) -> TimedRun:
        return TimedRun(time.perf_counter() - self.start, self.times)


def check_lengths(engine: str, run: TimedRun, output_lens: list[int]) -> None:
    """Every request made exactly its output_len tokens (the benchmarks' contract)."""
    if run.token_times is None:
        return
    made = [len(t) for t in run.token_times]
    if made != list(output_lens):
        raise RuntimeError(f"{engine} generated {made} tokens, not {list(output_lens)}")
