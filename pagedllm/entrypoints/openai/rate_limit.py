"""Per-key limits: token buckets for requests and tokens per minute, and a concurrency cap.

A bucket holds up to `per_minute` units and refills continuously at per_minute / 60 per second,
so a key may burst its whole minute at once and then proceeds at its rate (OpenAI's limits
behave so too). Requests are taken from their bucket when a request arrives. Tokens cannot be
known in advance (the completion's length is not), so a request is admitted while the token
bucket is positive and is charged its usage (prompt + completion tokens) when it ends: the bucket
may go negative, and the key waits until it refills. The clock is injectable for tests.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]

current_token_meter: contextvars.ContextVar[Callable[[int], None] | None] = (
    contextvars.ContextVar("current_token_meter", default=None))
"""Set by the API-key middleware for the request it runs: charges the request's key its tokens
(serving_engine.generate calls it with each engine request's usage when that request ends)."""


class TokenBucket:
    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        """Units refilled per second."""
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now
        return self._level

    def take(self, amount: float) -> bool:
        """Take `amount` if the bucket holds it."""
        if self.level() < amount:
            return False
        self._level -= amount
        return True

    def charge(self, amount: float) -> None:
        """Take `amount` whatever the level (usage known after the fact: may go negative)."""
        self.level()
        self._level -= amount

    def seconds_until(self, amount: float) -> float:
        """Until the bucket holds `amount`."""
        return max(0.0, (amount - self.level()) / self.rate)

    def seconds_until_full(self) -> float:
        return (self.capacity - self.level()) / self.rate


@dataclass
class Decision:
    allowed: bool
    reason: str | None = None
    """Why not: "requests", "tokens" or "concurrency"."""
    retry_after_s: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    """OpenAI's x-ratelimit-* headers for the limits the key has."""


class KeyLimiter:
    """One key's limits (None: unlimited)."""

    def __init__(self, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None, max_concurrent: int | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.requests = (TokenBucket(requests_per_minute, clock)
                         if requests_per_minute is not None else None)
        self.tokens = (TokenBucket(tokens_per_minute, clock)
                       if tokens_per_minute is not None else None)
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    def acquire(self) -> Decision:
        """Admit one request (take its request unit, count it in flight) or say why not; a
        refused request takes nothing."""
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            return Decision(False, "concurrency", 1, self.headers())
        if self.tokens is not None and self.tokens.level() < 1:
            wait = self.tokens.seconds_until(1)
            return Decision(False, "tokens", _ceil(wait), self.headers())
        if self.requests is not None and not self.requests.take(1):
            wait = self.requests.seconds_until(1)
            return Decision(False, "requests", _ceil(wait), self.headers())
        self.in_flight += 1
        return Decision(True, headers=self.headers())

    def release(self) -> None:
        """The admitted request ended."""
        self.in_flight -= 1

    def charge_tokens(self, num_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.charge(num_tokens)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level())))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.seconds_until_full())
        return headers


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest):d}s"


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
