"""Request deadlines (deadline.py) on a fake engine stream: cut short with what it has, the
engine stream closed (AsyncLLM aborts the request there)."""

from __future__ import annotations

import asyncio

from pagedllm.entrypoints.openai.deadline import prepare, with_deadline
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


class FakeEngine:
    def __init__(self) -> None:
        self.aborted = False

    async def stream(self, kind: RequestOutputKind, n_steps: int, delay: float):
        """One token per step; cumulative or delta text."""
        text, last = "", False
        try:
            for step in range(n_steps):
                await asyncio.sleep(delay)
                piece = f"t{step} "
                text += piece
                last = step == n_steps - 1
                shown = piece if kind == RequestOutputKind.DELTA else text
                yield RequestOutput("r", None, [1, 2], [CompletionOutput(
                    0, shown, [step], finish_reason="length" if last else None)], finished=last)
        finally:
            self.aborted = not last


def _run(kind: RequestOutputKind, n_steps: int, delay: float, timeout: float):
    params = SamplingParams(max_tokens=n_steps, output_kind=kind)
    final_only = prepare(params)
    engine = FakeEngine()

    async def collect():
        stream = engine.stream(params.output_kind, n_steps, delay)
        return [o async for o in with_deadline(stream, timeout, params, final_only, "r", [1, 2])]

    return asyncio.run(collect()), engine, params


def test_streamed_request_is_cut_short_and_aborted():
    outputs, engine, _ = _run(RequestOutputKind.DELTA, 100, 0.01, 0.1)
    assert engine.aborted
    assert 3 <= len(outputs) < 100
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
    assert outputs[-1].outputs[0].text == ""  # the cut adds nothing new
    assert all(not o.finished for o in outputs[:-1])


def test_whole_request_keeps_its_text_so_far():
    outputs, engine, params = _run(RequestOutputKind.FINAL_ONLY, 100, 0.01, 0.1)
    assert params.output_kind == RequestOutputKind.CUMULATIVE
    assert engine.aborted and len(outputs) == 1
    final = outputs[0].outputs[0]
    assert final.finish_reason == "length" and final.text.startswith("t0 t1 t2 ")
    assert final.token_ids == [len(final.text.split()) - 1]  # the last cumulative output


def test_request_within_its_deadline_is_untouched():
    outputs, engine, _ = _run(RequestOutputKind.FINAL_ONLY, 3, 0.001, 5.0)
    assert not engine.aborted
    assert len(outputs) == 1 and outputs[0].outputs[0].text == "t0 t1 t2 "


def test_request_that_never_started_answers_empty():
    outputs, engine, _ = _run(RequestOutputKind.DELTA, 5, 1.0, 0.05)
    assert engine.aborted and len(outputs) == 1
    assert outputs[0].finished and outputs[0].outputs[0].text == ""
    assert outputs[0].prompt_token_ids == [1, 2]
