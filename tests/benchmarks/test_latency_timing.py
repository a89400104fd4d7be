"""bench latency's run loop on stand-in engines: one that stamps its tokens runs only full runs,
one that cannot also runs 1-token (prefill) runs and falls back to the subtraction; the engines
alternate run by run."""

from __future__ import annotations

import argparse

import pytest

from pagedllm.benchmarks.latency import _measure
from pagedllm.benchmarks.stats import PER_TOKEN, SUBTRACTION
from pagedllm.benchmarks.timing import TimedRun


class FakeEngine:
    """Runs take `prefill` s plus `gap` s per token after the first (on paper: nothing sleeps)."""

    def __init__(self, name: str, log: list, stamps: bool, prefill: float, gap: float) -> None:
        self.name, self.log, self.stamps = name, log, stamps
        self.prefill, self.gap = prefill, gap

    def __call__(self, prompts: list[list[int]], lens: list[int]) -> TimedRun:
        self.log.append((self.name, prompts[0][0], lens[0]))
        times = [[self.prefill + self.gap * i for i in range(n)] for n in lens]
        elapsed = max(t[-1] for t in times)
        return TimedRun(elapsed, times if self.stamps else None)


def test_measure_stamped_and_unstamped_engines(capsys):
    log: list = []
    runners = {
        "ours": FakeEngine("ours", log, True, prefill=0.5, gap=0.01),
        "peer": FakeEngine("peer", log, False, prefill=0.5, gap=0.02),
    }
    args = argparse.Namespace(num_iters_warmup=1, num_iters=2, input_len=4, output_len=11)
    stats = _measure(runners, lambda run: [[run] * 4] * 2, args)
    # warm-up (prompt 0) each, then run 1: ours, peer (+ its prefill on prompt 2); run 2 flipped
    assert log == [
        ("ours", 0, 11), ("peer", 0, 11),
        ("ours", 1, 11), ("peer", 1, 11), ("peer", 2, 1),
        ("peer", 3, 11), ("peer", 4, 1), ("ours", 3, 11),
    ]  # fmt: skip
    ours, peer = stats["ours"], stats["peer"]
    assert ours["timing"] == PER_TOKEN and peer["timing"] == SUBTRACTION
    assert ours["decode_tok_s_per_request"] == pytest.approx(100.0)
    assert ours["decode_tok_s"] == pytest.approx(200.0)
    assert ours["prefill_tok_s"] == pytest.approx(2 * 4 / 0.5)
    assert peer["decode_tok_s"] == pytest.approx(2 * 10 / (0.7 - 0.5))
    assert "note: peer gives no per-token times" in capsys.readouterr().out
