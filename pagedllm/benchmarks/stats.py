"""Summary statistics of benchmark timings: percentiles, latency runs, serving requests."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from pagedllm.benchmarks.timing import TimedRun

PER_TOKEN = "token_timestamps"
"""`timing` of latency stats measured from each token's arrival time."""
SUBTRACTION = "full_minus_prefill"
"""`timing` of latency stats from whole-run times: full runs minus 1-token (prefill) runs."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between order statistics (numpy's
    default, as vLLM reports them); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """mean, median, p90, p99 (each times `scale`, e.g. 1000 for ms); zeros for no values."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0}
    return {
        "mean": statistics.fmean(values) * scale,
        "median": percentile(values, 50) * scale,
        "p90": percentile(values, 90) * scale,
        "p99": percentile(values, 99) * scale,
    }


def latency_stats(
    batch_size: int,
    input_len: int,
    output_len: int,
    full_s: Sequence[float],
    prefill_s: Sequence[float],
) -> dict:
    """A latency benchmark's numbers from whole-batch times: `full_s` generating output_len
    tokens, `prefill_s` generating 1 (the prefill). decode tok/s = batch * (output_len - 1) /
    (full - prefill), with the means; None when it cannot be told (output_len 1, or the
    prefill runs took longer than the full ones: see timed_latency_stats for what avoids it)."""
    full, prefill = statistics.fmean(full_s), statistics.fmean(prefill_s)
    decode_s = full - prefill
    decode = batch_size * (output_len - 1) / decode_s if output_len > 1 and decode_s > 0 else None
    return {
        "latency_s": summarize(full_s),
        "prefill_latency_s": summarize(prefill_s),
        "prefill_tok_s": batch_size * input_len / prefill,
        "decode_tok_s": decode,
        "e2e_tok_s": batch_size * output_len / full,
        "iters": len(full_s),
        "timing": SUBTRACTION,
    }


def decode_rate(token_times: Sequence[float]) -> float | None:
    """One request's decode tok/s: the tokens after the first over the time from the first to
    the last; None with fewer than two tokens or all of them at one instant."""
    span = token_times[-1] - token_times[0] if len(token_times) > 1 else 0.0
    return (len(token_times) - 1) / span if span > 0 else None


def timed_latency_stats(
    batch_size: int, input_len: int, output_len: int, runs: Sequence[TimedRun]
) -> dict:
    """latency_stats' numbers from full runs whose tokens carry arrival times (no prefill runs).

    prefill: a run's prefill lasts until every request of the batch has its first token
    (`prefill_latency_s`); prefill tok/s = batch * input_len / its mean.
    decode: each request's decode_rate, averaged over every request of every run
    (`decode_tok_s_per_request`, one stream's speed); `decode_tok_s` = batch * that average, the
    batch's tokens per second as latency_stats counts them. TTFT per request in `ttft_s`.
    """
    timelines = [t for run in runs for t in _token_times(run)]
    prefill_s = [max(t[0] for t in _token_times(run)) for run in runs]
    rates = [r for r in map(decode_rate, timelines) if r is not None]
    per_request = statistics.fmean(rates) if rates else None
    full_s = [run.elapsed_s for run in runs]
    return {
        "latency_s": summarize(full_s),
        "prefill_latency_s": summarize(prefill_s),
        "prefill_tok_s": batch_size * input_len / statistics.fmean(prefill_s),
        "decode_tok_s": batch_size * per_request if per_request is not None else None,
        "e2e_tok_s": batch_size * output_len / statistics.fmean(full_s),
        "iters": len(runs),
        "timing": PER_TOKEN,
        "decode_tok_s_per_request": per_request,
        "ttft_s": summarize([t[0] for t in timelines]),
    }


def _token_times(run: TimedRun) -> list[list[float]]:
    assert run.token_times is not None and all(run.token_times), "a run without token times"
    return run.token_times


def throughput_stats(requests: Sequence[tuple[int, int]], elapsed_s: float) -> dict:
    """Offline throughput from (prompt_len, output_len) pairs that all ran in elapsed_s."""
    input_tokens = sum(p for p, _ in requests)
    output_tokens = sum(o for _, o in requests)
    return {
        "elapsed_s": elapsed_s,
        "num_requests": len(requests),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "requests_per_s": len(requests) / elapsed_s,
        "output_tok_s": output_tokens / elapsed_s,
        "total_tok_s": (input_tokens + output_tokens) / elapsed_s,
    }


@dataclass
class RequestResult:
    """One streamed request as the client saw it (seconds from sending it)."""

    prompt_len: int
    expected_output_len: int
    success: bool = False
    output_tokens: int = 0
    """completion_tokens of the final usage chunk."""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    """Gaps between successive content chunks."""
    error: str | None = None


def serving_stats(results: Sequence[RequestResult], duration_s: float) -> dict:
    """vLLM's serving metrics over the successful requests; latencies in ms. TPOT of a request is
    (e2e - ttft) / (output_tokens - 1), for requests with more than one token."""
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "exact_output_lens": all(r.output_tokens == r.expected_output_len for r in ok),
        "request_throughput": len(ok) / duration_s,
        "output_tok_s": output_tokens / duration_s,
        "total_tok_s": (input_tokens + output_tokens) / duration_s,
        "ttft_ms": summarize([r.ttft for r in ok], 1000),
        "tpot_ms": summarize(tpot, 1000),
        "itl_ms": summarize([x for r in ok for x in r.itl], 1000),
        "e2e_ms": summarize([r.latency for r in ok], 1000),
    }
