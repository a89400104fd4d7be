"""Waiting-queue policies: FCFS (arrival order) and priority (lower value first, then arrival)."""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

from pagedllm.request import Request


class RequestQueue(ABC):
    """Requests waiting for their (first or resumed) scheduling, in scheduling order."""

    @abstractmethod
    def add(self, request: Request) -> None:
        """Enqueue a new request according to the policy."""

    @abstractmethod
    def prepend(self, request: Request) -> None:
        """Enqueue a preempted request so it is scheduled before newer arrivals."""

    @abstractmethod
    def peek(self) -> Request:
        """The next request to schedule (IndexError if empty)."""

    @abstractmethod
    def pop(self) -> Request:
        """Remove and return the next request to schedule."""

    @abstractmethod
    def remove(self, request: Request) -> None:
        """Remove a request from anywhere in the queue (ValueError if absent)."""

    @abstractmethod
    def __iter__(self) -> Iterator[Request]:
        """Requests in scheduling order."""

    @abstractmethod
    def __len__(self) -> int: ...

    def __bool__(self) -> bool:
        return len(self) > 0


class FCFSRequestQueue(RequestQueue):
    """Arrival order; preempted requests go back to the front."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def add(self, request: Request) -> None:
        self._queue.append(request)

    def prepend(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        return self._queue[0]

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        self._queue.remove(request)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

    def __len__(self) -> int:
        return len(self._queue)


class PriorityRequestQueue(RequestQueue):
    """Heap on (priority, arrival_time); ties keep insertion order. A preempted request keeps
    its key, so it is placed ahead of anything that arrived after it at the same priority."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add(self, request: Request) -> None:
        key = (request.priority, request.arrival_time, next(self._counter), request)
        heapq.heappush(self._heap, key)

    def prepend(self, request: Request) -> None:
        self.add(request)

    def peek(self) -> Request:
        return self._heap[0][3]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        kept = [entry for entry in self._heap if entry[3] is not request]
        if len(kept) == len(self._heap):
            raise ValueError(f"{request} is not in the queue")
        self._heap = kept
        heapq.heapify(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[3] for entry in sorted(self._heap, key=lambda e: e[:3]))

    def __len__(self) -> int:
        return len(self._heap)


def create_request_queue(policy: str) -> RequestQueue:
    if policy == "fcfs":
        return FCFSRequestQueue()
    if policy == "priority":
        return PriorityRequestQueue()
    raise ValueError(f"unknown scheduling policy {policy!r}")
