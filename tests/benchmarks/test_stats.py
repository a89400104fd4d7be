"""Percentiles and the latency / throughput / serving metrics on synthetic timings."""

from __future__ import annotations

import numpy as np
import pytest

from pagedllm.benchmarks.stats import (
    PER_TOKEN,
    SUBTRACTION,
    RequestResult,
    decode_rate,
    latency_stats,
    percentile,
    serving_stats,
    summarize,
    throughput_stats,
    timed_latency_stats,
)
from pagedllm.benchmarks.timing import TimedRun


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        values = rng.exponential(size=n).tolist()
        for q in (0, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 50) == 0.0


def test_summarize():
    s = summarize([4.0, 1.0, 3.0, 2.0], scale=1000)
    assert s == pytest.approx({"mean": 2500.0, "median": 2500.0, "p90": 3700.0, "p99": 3970.0})
    assert summarize([]) == {"mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0}


def test_latency_stats():
    # batch 4, 32 prompt tokens, 11 output tokens; full runs 2.0/3.0 s, prefill 0.4/0.6 s.
    s = latency_stats(4, 32, 11, [2.0, 3.0], [0.4, 0.6])
    assert s["latency_s"]["mean"] == pytest.approx(2.5)
    assert s["prefill_tok_s"] == pytest.approx(4 * 32 / 0.5)
    assert s["decode_tok_s"] == pytest.approx(4 * 10 / 2.0)
    assert s["e2e_tok_s"] == pytest.approx(4 * 11 / 2.5)
    assert latency_stats(1, 8, 1, [0.5], [0.5])["decode_tok_s"] is None
    assert s["timing"] == SUBTRACTION


def test_decode_rate():
    assert decode_rate([0.5, 0.6, 0.7, 0.9]) == pytest.approx(3 / 0.4)
    assert decode_rate([0.5, 0.5, 0.7]) == pytest.approx(2 / 0.2)  # two tokens of one step
    assert decode_rate([0.5]) is None
    assert decode_rate([0.5, 0.5]) is None


def _timeline(ttft: float, gap: float, tokens: int) -> list[float]:
    return [ttft + gap * i for i in range(tokens)]


def test_timed_latency_stats_on_a_fake_timeline():
    # batch 2, 100-token prompts, 5 output tokens. Run 1: first tokens at 1.0 / 1.2 s, then one
    # token every 0.1 / 0.2 s; run 2: 3.0 / 2.0 s, every 0.1 s. Wall times 1.5 and 3.6 s.
    runs = [
        TimedRun(1.5, [_timeline(1.0, 0.1, 5), _timeline(1.2, 0.2, 5)]),
        TimedRun(3.6, [_timeline(3.0, 0.1, 5), _timeline(2.0, 0.1, 5)]),
    ]
    s = timed_latency_stats(2, 100, 5, runs)
    assert s["timing"] == PER_TOKEN and s["iters"] == 2
    # the batch's prefill ends with its last first token: 1.2 and 3.0 s
    assert s["prefill_latency_s"]["mean"] == pytest.approx(2.1)
    assert s["prefill_tok_s"] == pytest.approx(2 * 100 / 2.1)
    assert s["ttft_s"]["mean"] == pytest.approx((1.0 + 1.2 + 3.0 + 2.0) / 4)
    per_request = (10 + 5 + 10 + 10) / 4  # 4 tokens over 0.4 s, 0.8 s, 0.4 s, 0.4 s
    assert s["decode_tok_s_per_request"] == pytest.approx(per_request)
    assert s["decode_tok_s"] == pytest.approx(2 * per_request)
    assert s["latency_s"]["mean"] == pytest.approx(2.55)
    assert s["e2e_tok_s"] == pytest.approx(2 * 5 / 2.55)
    # the old subtraction on these runs (1-token runs as long as the prefill varies) says n/a
    assert latency_stats(2, 100, 5, [1.5, 3.6], [1.2, 4.0])["decode_tok_s"] is None


def test_timed_latency_stats_one_output_token():
    s = timed_latency_stats(1, 8, 1, [TimedRun(0.3, [[0.25]])])
    assert s["decode_tok_s"] is None and s["decode_tok_s_per_request"] is None
    assert s["prefill_tok_s"] == pytest.approx(8 / 0.25)


def test_throughput_stats():
    s = throughput_stats([(10, 5), (30, 15)], elapsed_s=2.0)
    assert s["requests_per_s"] == 1.0
    assert s["output_tok_s"] == 10.0
    assert s["total_tok_s"] == 30.0


def test_serving_stats():
    a = RequestResult(
        10, 5, success=True, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1, 0.1, 0.1, 0.1]
    )
    b = RequestResult(20, 3, success=True, output_tokens=3, ttft=0.3, latency=0.7, itl=[0.2, 0.2])
    failed = RequestResult(99, 9, error="HTTP 400")
    s = serving_stats([a, b, failed], duration_s=2.0)
    assert (s["completed"], s["failed"], s["errors"]) == (2, 1, ["HTTP 400"])
    assert s["input_tokens"] == 30 and s["output_tokens"] == 8  # failures not counted
    assert s["exact_output_lens"] is True
    assert s["request_throughput"] == 1.0
    assert s["output_tok_s"] == 4.0 and s["total_tok_s"] == 19.0
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    # TPOT: (0.5 - 0.1) / 4 = 0.1 s and (0.7 - 0.3) / 2 = 0.2 s.
    assert s["tpot_ms"]["mean"] == pytest.approx(150.0)
    assert s["itl_ms"]["median"] == pytest.approx(100.0)
    assert s["itl_ms"]["mean"] == pytest.approx(1000 * 0.8 / 6)
    assert s["e2e_ms"]["p99"] == pytest.approx(1000 * (0.5 + 0.99 * 0.2))
    short = RequestResult(1, 5, success=True, output_tokens=4, ttft=0.1, latency=0.2)
    assert serving_stats([short], 1.0)["exact_output_lens"] is False
