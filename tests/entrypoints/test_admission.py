"""Admission control (--max-num-queued-requests/-tokens) without a server: a fake queue depth."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass

import pytest

from pagedllm.entrypoints.openai.admission import AdmissionControl, AdmissionLimits, QueueFullError
from pagedllm.entrypoints.openai.errors import BadRequestError


@dataclass
class FakeQueue:
    num_queued_requests: int = 0
    num_queued_tokens: int = 0


async def _items(n: int, queue: FakeQueue | None = None, tokens: int = 0):
    if queue is not None:  # what AsyncLLM._add_request does on the first __anext__
        queue.num_queued_requests += 1
        queue.num_queued_tokens += tokens
    for i in range(n):
        yield i


def test_requests_limit_counts_engine_queue_and_reservations():
    queue = FakeQueue(num_queued_requests=1, num_queued_tokens=10)
    control = AdmissionControl(AdmissionLimits(max_num_queued_requests=3), queue)
    first = control.admit(5)
    second = control.admit(5)
    assert control.queued_requests == 3
    with pytest.raises(QueueFullError) as info:
        control.admit(5)
    assert info.value.status_code == 503
    assert info.value.headers == {"Retry-After": "1"}
    assert info.value.code == "queue_full"
    assert control.num_rejected == 1
    first.release()
    first.release()  # idempotent
    control.admit(5)
    assert control.queued_requests == 3
    second.release()
    assert control.queued_requests == 2


def test_tokens_limit_counts_every_sample():
    control = AdmissionControl(AdmissionLimits(max_num_queued_tokens=100), FakeQueue(0, 40))
    control.admit(20, num_seqs=2)  # 40 more
    with pytest.raises(QueueFullError):
        control.admit(21)
    control.admit(20)
    assert control.queued_tokens == 100


def test_a_request_larger_than_the_queue_is_a_400():
    control = AdmissionControl(AdmissionLimits(2, 50), FakeQueue())
    with pytest.raises(BadRequestError):
        control.admit(1, num_seqs=3)
    with pytest.raises(BadRequestError):
        control.admit(51)


def test_ticket_is_released_when_the_stream_starts_and_the_engine_counts_it():
    queue = FakeQueue()
    control = AdmissionControl(AdmissionLimits(max_num_queued_requests=1), queue)

    async def run() -> list[int]:
        stream = control.admitted(control.admit(7), _items(3, queue, 7))
        assert control.queued_requests == 1
        items = [item async for item in stream]
        assert (control._reserved_requests, queue.num_queued_requests) == (0, 1)
        return items

    assert asyncio.run(run()) == [0, 1, 2]
    assert control.queued_tokens == 7  # the engine's count, no reservation left


def test_a_stream_never_started_gives_its_ticket_back():
    control = AdmissionControl(AdmissionLimits(max_num_queued_requests=1), FakeQueue())
    stream = control.admitted(control.admit(3), _items(1))
    with pytest.raises(QueueFullError):
        control.admit(3)
    del stream
    gc.collect()
    assert control.queued_requests == 0
    control.admit(3)


def test_limits_are_validated():
    with pytest.raises(ValueError):
        AdmissionLimits(max_num_queued_requests=0)
    assert not AdmissionLimits().enabled
