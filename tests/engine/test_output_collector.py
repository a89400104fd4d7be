"""RequestOutputCollector: one pending output per request whatever the reader's pace; DELTA outputs
merged without loss, CUMULATIVE ones replaced, an error handed over after the pending output."""

from __future__ import annotations

import asyncio

import pytest

from pagedllm.engine.output_collector import RequestOutputCollector
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput


def _delta(index: int, step: int, finished: bool = False) -> RequestOutput:
    completion = CompletionOutput(index, f"<{index}:{step}>", [step], cumulative_logprob=-step,
                                  logprobs=[{step: Logprob(-0.5)}],
                                  finish_reason="length" if finished else None)
    return RequestOutput("r", "p", [1], [completion], finished=finished)


def test_slow_reader_gets_every_delta_merged_and_nothing_piles_up():
    async def run():
        collector = RequestOutputCollector(aggregate=True)
        for step in range(1000):  # the reader is away for 1000 engine steps, two samples each
            for index in (0, 1):
                collector.put(_delta(index, step, finished=step == 999))
            assert collector.qsize() == 1
        return await collector.get(), collector.qsize()

    merged, left = asyncio.run(run())
    assert left == 0 and merged.finished
    by_index = {c.index: c for c in merged.outputs}
    for index in (0, 1):
        completion = by_index[index]
        assert completion.text == "".join(f"<{index}:{s}>" for s in range(1000))
        assert completion.token_ids == list(range(1000))
        assert [next(iter(lp)) for lp in completion.logprobs] == list(range(1000))
        assert completion.cumulative_logprob == -999 and completion.finish_reason == "length"


def test_reader_in_step_gets_each_output_as_is():
    async def run():
        collector = RequestOutputCollector(aggregate=True)
        got = []
        for step in range(3):
            collector.put(_delta(0, step))
            got.append(await collector.get())
        return got

    assert [o.outputs[0].text for o in asyncio.run(run())] == ["<0:0>", "<0:1>", "<0:2>"]


def test_cumulative_outputs_replace_the_pending_one():
    collector = RequestOutputCollector(aggregate=False)
    for step in range(5):
        collector.put(_delta(0, step))
    assert collector.get_nowait().outputs[0].text == "<0:4>"
    with pytest.raises(asyncio.QueueEmpty):
        collector.get_nowait()


def test_error_comes_after_the_pending_output_and_stays():
    collector = RequestOutputCollector(aggregate=True)
    collector.put(_delta(0, 0))
    collector.put(RuntimeError("engine died"))
    collector.put(_delta(0, 1))  # (a late output is merged; the error still follows it)
    first = collector.get_nowait()
    assert first.outputs[0].text == "<0:0><0:1>"
    assert isinstance(collector.get_nowait(), RuntimeError)
    assert isinstance(asyncio.run(collector.get()), RuntimeError)
