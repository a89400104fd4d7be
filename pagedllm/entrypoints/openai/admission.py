"""Admission control: a generation request that would overfill the engine's waiting queue is
refused with 503 + Retry-After before its response starts (`--max-num-queued-requests`,
`--max-num-queued-tokens`).

Where the queue depth comes from: the API process may not import core/, and the scheduler's own
`num_waiting_reqs` arrives only once per step (stale under a burst). So the depth is counted here:
`AsyncLLM.num_queued_requests` / `num_queued_tokens` are the engine-core requests (one per
sample) added and not yet given any output, with their prompt tokens. That is the engine's waiting
queue plus the requests whose prefill has not produced a token yet; a preempted request (which
has output) is not counted. On top of it come the reservations this module holds for requests
that passed the check but whose stream has not started (the handler returned, the response has
not begun iterating): without them a burst could pass the check all at once.

    generate_for() ── admit(): depth + reserved + this request ≤ limits? ── no ──▶ 503
                         │ yes: a Ticket (reserved)
                         ▼
    first __anext__ ── ticket.release() ── AsyncLLM._add_request counts it (same loop step)
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, TypeVar

from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError

T = TypeVar("T")


@dataclass(frozen=True)
class AdmissionLimits:
    max_num_queued_requests: int | None = None
    """Most engine-core requests (samples) waiting to run; None: no limit."""
    max_num_queued_tokens: int | None = None
    """Most prompt tokens of the waiting requests; None: no limit."""
    retry_after_s: int = 1
    """Retry-After of the 503 (seconds)."""

    def __post_init__(self) -> None:
        for name in ("max_num_queued_requests", "max_num_queued_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    @property
    def enabled(self) -> bool:
        return self.max_num_queued_requests is not None or self.max_num_queued_tokens is not None


class QueueDepth(Protocol):
    """What admission reads from the engine (AsyncLLM)."""

    @property
    def num_queued_requests(self) -> int: ...

    @property
    def num_queued_tokens(self) -> int: ...


class QueueFullError(OpenAIError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "server_error"


class Ticket:
    """A reservation in the queue, held from admission until the engine counts the request."""

    def __init__(self, control: AdmissionControl, num_requests: int, num_tokens: int) -> None:
        self._control = control
        self.num_requests = num_requests
        self.num_tokens = num_tokens
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._control._reserved_requests -= self.num_requests
            self._control._reserved_tokens -= self.num_tokens


class AdmissionControl:
    def __init__(self, limits: AdmissionLimits, queue: QueueDepth) -> None:
        self.limits = limits
        self.queue = queue
        self._reserved_requests = 0
        self._reserved_tokens = 0
        self.num_rejected = 0

    @property
    def queued_requests(self) -> int:
        return self.queue.num_queued_requests + self._reserved_requests

    @property
    def queued_tokens(self) -> int:
        return self.queue.num_queued_tokens + self._reserved_tokens

    def admit(self, num_prompt_tokens: int, num_seqs: int = 1) -> Ticket:
        """Reserve room for a request of `num_seqs` samples of one prompt, or raise
        QueueFullError (a 503 with Retry-After)."""
        limits = self.limits
        tokens = num_prompt_tokens * num_seqs
        self._check_fits(num_seqs, tokens)
        if (limits.max_num_queued_requests is not None
                and self.queued_requests + num_seqs > limits.max_num_queued_requests):
            self._reject(f"the server's request queue is full ({self.queued_requests} of "
                         f"{limits.max_num_queued_requests} requests waiting)")
        if (limits.max_num_queued_tokens is not None
                and self.queued_tokens + tokens > limits.max_num_queued_tokens):
            self._reject(f"the server's request queue is full ({self.queued_tokens} of "
                         f"{limits.max_num_queued_tokens} prompt tokens waiting; this request "
                         f"adds {tokens})")
        self._reserved_requests += num_seqs
        self._reserved_tokens += tokens
        return Ticket(self, num_seqs, tokens)

    def _check_fits(self, num_seqs: int, tokens: int) -> None:
        """A request larger than the whole queue would get 503 forever: a 400 instead."""
        limits = self.limits
        if limits.max_num_queued_requests is not None and num_seqs > limits.max_num_queued_requests:
            raise BadRequestError(
                f"the request asks for {num_seqs} sequences, more than the server queues "
                f"(--max-num-queued-requests {limits.max_num_queued_requests})", param="n")
        if limits.max_num_queued_tokens is not None and tokens > limits.max_num_queued_tokens:
            raise BadRequestError(
                f"the request's prompt tokens ({tokens}, counted once per sequence) exceed what "
                f"the server queues (--max-num-queued-tokens {limits.max_num_queued_tokens})")

    def _reject(self, message: str) -> None:
        self.num_rejected += 1
        raise QueueFullError(message + "; retry later", code="queue_full",
                             headers={"Retry-After": str(self.limits.retry_after_s)})

    def admitted(self, ticket: Ticket, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """`stream` holding `ticket` until it starts (the engine counts it from then on). A stream
        never iterated (its response never started) gives the ticket back when collected."""
        wrapped = _release_on_start(ticket, stream)
        weakref.finalize(wrapped, ticket.release)
        return wrapped


async def _release_on_start(ticket: Ticket, stream: AsyncIterator[T]) -> AsyncIterator[T]:
    # NOTE: no await suspends between this release and AsyncLLM._add_request (the first
    # __anext__ below runs synchronously up to the request's queue), so no other request can
    # slip in between.
    ticket.release()
    async with aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            yield item
