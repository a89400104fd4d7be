"""Per-request timing seen by the front end (time to first token, inter-token latency, end-to-end
latency) and its aggregation per batch of engine outputs.

The engine core only counts tokens; latencies are measured where the user sees them, in the process
that receives the outputs, with one monotonic clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.engine.messages import EngineCoreOutput


@dataclass
class RequestTiming:
    arrival_time: float
    num_prompt_tokens: int
    first_token_time: float | None = None
    last_token_time: float | None = None
    num_generation_tokens: int = 0
    lora_name: str | None = None
    """The LoRA adapter the request ran under (None: the base model)."""
    wall_arrival_time: float = field(default_factory=time.time)
    """Epoch seconds at arrival: where a trace span starts."""
    trace_headers: dict[str, str] | None = None
    """The HTTP request's W3C trace context (traceparent, tracestate), when it sent one."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """What the request asked for, for its trace span (temperature, top_p, max_tokens, n)."""


@dataclass
class FinishedRequestStats:
    finish_reason: str
    """"stop", "length" or "abort"."""
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int
    mean_time_per_output_token: float | None
    """(last token - first token) / (tokens - 1); None with fewer than two tokens."""
    lora_name: str | None = None
    request_id: str = ""
    time_to_first_token: float | None = None
    wall_arrival_time: float = 0.0
    trace_headers: dict[str, str] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class IterationStats:
    """What one batch of engine outputs (about one engine step) did."""

    num_prompt_tokens: int = 0
    """Prompt tokens of the requests that got their first token in this batch."""
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.num_prompt_tokens or self.num_generation_tokens
                    or self.finished_requests)


class RequestStatsTracker:
    """Timing of every live (child) request, keyed by the engine-core request id."""

    def __init__(self) -> None:
        self.requests: dict[str, RequestTiming] = {}

    def add_request(self, request_id: str, num_prompt_tokens: int, now: float,
                    lora_name: str | None = None, trace_headers: dict[str, str] | None = None,
                    attributes: dict[str, Any] | None = None) -> None:
        self.requests[request_id] = RequestTiming(now, num_prompt_tokens, lora_name=lora_name,
                                                  trace_headers=trace_headers,
                                                  attributes=attributes or {})

    def update(self, outputs: list[EngineCoreOutput], stopped: list[str], now: float
               ) -> IterationStats:
        """Account one batch of outputs; `stopped` are requests a stop string just ended."""
        stats = IterationStats()
        for out in outputs:
            timing = self.requests.get(out.request_id)
            if timing is None or not out.new_token_ids:
                continue
            if timing.first_token_time is None:
                timing.first_token_time = now
                stats.num_prompt_tokens += timing.num_prompt_tokens
                stats.time_to_first_tokens.append(now - timing.arrival_time)
            else:
                stats.inter_token_latencies.append(now - timing.last_token_time)  # type: ignore[operator]
            timing.last_token_time = now
            timing.num_generation_tokens += len(out.new_token_ids)
            stats.num_generation_tokens += len(out.new_token_ids)
        for out in outputs:
            if out.finish_reason is not None:
                self.finish(out.request_id, out.finish_reason.value, now, stats)
        for request_id in stopped:
            self.finish(request_id, "stop", now, stats)
        return stats

    def finish(self, request_id: str, reason: str, now: float, stats: IterationStats) -> None:
        timing = self.requests.pop(request_id, None)
        if timing is None:
            return
        tpot = None
        if timing.num_generation_tokens > 1 and timing.first_token_time is not None:
            tpot = ((timing.last_token_time - timing.first_token_time)  # type: ignore[operator]
                    / (timing.num_generation_tokens - 1))
        ttft = (None if timing.first_token_time is None
                else timing.first_token_time - timing.arrival_time)
        stats.finished_requests.append(FinishedRequestStats(
            reason, now - timing.arrival_time, timing.num_prompt_tokens,
            timing.num_generation_tokens, tpot, timing.lora_name, request_id, ttft,
            timing.wall_arrival_time, timing.trace_headers, timing.attributes,
        ))
