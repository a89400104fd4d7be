"""RequestOutputCollector: the hand-off of one request's outputs from AsyncLLM's output task to the
request's reader, bounded to one pending output whatever the reader's speed (vLLM's design).

A reader that falls behind (a slow HTTP client: the SSE generator waits on the socket) does not
make a queue grow by one output per engine step: while the reader is away, DELTA outputs are
merged into the pending one (text and token ids concatenated, logprobs appended, the latest
finish reason kept), and CUMULATIVE / FINAL_ONLY outputs replace it (each holds everything so
far). The reader then gets one larger delta; nothing is lost. An error (the engine died) is kept
apart and handed over after the pending output.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pagedllm.outputs import CompletionOutput, RequestOutput


class RequestOutputCollector:
    def __init__(self, aggregate: bool) -> None:
        self.aggregate = aggregate
        """DELTA outputs: merge a new output into the pending one instead of replacing it."""
        self._output: Any = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: Any) -> None:
        """Called by the output task; never blocks, never holds more than one output."""
        if isinstance(item, BaseException):
            if self._error is None:
                self._error = item
        elif self._output is None or not self.aggregate:
            self._output = item
        else:
            merge_delta(self._output, item)
        self._ready.set()

    # asyncio.Queue's names, so code written against the queue keeps working
    put_nowait = put

    async def get(self) -> Any:
        """The pending output (merged), or the error once no output is pending."""
        while self._output is None and self._error is None:
            await self._ready.wait()
        return self.get_nowait()

    def get_nowait(self) -> Any:
        output = self._output
        if output is not None:
            self._output = None
            if self._error is None:
                self._ready.clear()
            return output
        if self._error is not None:
            return self._error  # stays: every later get() sees it too
        raise asyncio.QueueEmpty

    def qsize(self) -> int:
        return int(self._output is not None) + int(self._error is not None)


def merge_delta(pending: RequestOutput, new: RequestOutput) -> None:
    """Append DELTA output `new` to `pending` (same request, later step), in place."""
    for completion in new.outputs:
        for held in pending.outputs:
            if held.index == completion.index:
                _extend(held, completion)
                break
        else:
            pending.outputs.append(completion)
    pending.finished = new.finished
    pending.num_cached_tokens = new.num_cached_tokens
    pending.metrics = new.metrics or pending.metrics
    if new.prompt_logprobs is not None:
        pending.prompt_logprobs = new.prompt_logprobs


def _extend(held: CompletionOutput, new: CompletionOutput) -> None:
    held.text += new.text
    held.token_ids = [*held.token_ids, *new.token_ids]
    if new.logprobs is not None:
        held.logprobs = [*(held.logprobs or []), *new.logprobs]
    held.cumulative_logprob = new.cumulative_logprob
    held.finish_reason = new.finish_reason
    held.stop_reason = new.stop_reason
