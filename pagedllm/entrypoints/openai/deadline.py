"""Request deadlines (`--request-timeout`): a generation past its deadline is aborted in the
engine (its KV blocks freed) and answers what it has, each unfinished sample with
finish_reason "length" (a limit cut it short; OpenAI's clients know no other value for that).

A FINAL_ONLY request (non-streaming) has nothing to show until it ends, so under a deadline it
runs as CUMULATIVE and only its last output goes out: the text so far is at hand when time runs
out. The deadline covers the wait in the engine's queue too (a request still queued when it
passes is answered with empty samples).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing

from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

TIMEOUT_FINISH_REASON = "length"


def prepare(params: SamplingParams) -> bool:
    """Switch a FINAL_ONLY request to CUMULATIVE (before it is sent); True if it was."""
    if params.output_kind != RequestOutputKind.FINAL_ONLY:
        return False
    params.output_kind = RequestOutputKind.CUMULATIVE
    return True


async def with_deadline(stream: AsyncIterator[RequestOutput], timeout_s: float,
                        params: SamplingParams, final_only: bool, request_id: str,
                        prompt_ids: list[int]) -> AsyncIterator[RequestOutput]:
    """`stream` until it finishes or `timeout_s` passes; then closing it aborts the request, and
    one last output ends every unfinished sample."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: RequestOutput | None = None
    finished: set[int] = set()
    async with aclosing(stream):  # type: ignore[type-var]
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                output = await asyncio.wait_for(anext(stream), remaining)
            except asyncio.TimeoutError:
                break  # the cancelled __anext__ aborted the request in the engine
            except StopAsyncIteration:
                return
            last = output
            finished.update(c.index for c in output.outputs if c.finished())
            if output.finished or not final_only:
                yield output
            if output.finished:
                return
    yield _cut_short(last, params, final_only, finished, request_id, prompt_ids)


def _cut_short(last: RequestOutput | None, params: SamplingParams, final_only: bool,
               finished: set[int], request_id: str, prompt_ids: list[int]) -> RequestOutput:
    """The last output of a request out of time: for a streamed (DELTA) request the samples still
    open with nothing new; for a whole one everything so far."""
    carried = {c.index: c for c in last.outputs} if (last is not None and final_only) else {}
    outputs = []
    for index in range(params.n):
        if index in finished and not final_only:
            continue
        completion = carried.get(index) or CompletionOutput(
            index, "", [], logprobs=[] if params.logprobs is not None else None)
        if not completion.finished():
            completion = dataclasses.replace(completion, finish_reason=TIMEOUT_FINISH_REASON)
        outputs.append(completion)
    if last is None:
        return RequestOutput(request_id, None, prompt_ids, outputs, finished=True)
    prompt_logprobs = last.prompt_logprobs if final_only else None
    return dataclasses.replace(last, outputs=outputs, finished=True,
                               prompt_logprobs=prompt_logprobs)
