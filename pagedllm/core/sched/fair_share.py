"""Per-tenant fair share of the batch: the waiting queue the scheduler reads when requests carry
a tenant (the API key's identity, `--api-keys-file`).

Each tenant has its own queue under the server's policy (FCFS or priority). The next request to
schedule is the head of the tenant whose share of the running batch is smallest: running requests
divided by the key's `fair_share` weight. So when the batch is full, a key flooding the server
holds the slots it already has, and each slot that frees goes to a key below its share first; its
own requests wait behind theirs. When nothing competes the order is the policy's own: with one
tenant (or none, as without an API-key file) this queue is exactly the policy's queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from pagedllm.core.sched.queue import RequestQueue, create_request_queue
from pagedllm.request import Request


def create_waiting_queue(policy: str, running: Callable[[], list[Request]]
                         ) -> FairShareRequestQueue:
    """The scheduler's waiting queue: the policy's order within each tenant, shared fairly
    between tenants (the policy's own order while there is one tenant)."""
    create_request_queue(policy)  # an unknown policy fails here, not at the first request
    return FairShareRequestQueue(lambda: create_request_queue(policy), running,
                                 by_priority=policy == "priority")


class FairShareRequestQueue(RequestQueue):
    def __init__(self, make_queue: Callable[[], RequestQueue],
                 running: Callable[[], list[Request]], by_priority: bool = False) -> None:
        self._make_queue = make_queue
        self._running = running
        """The scheduler's running requests (read at each peek: the list object is replaced)."""
        self._by_priority = by_priority
        self._queues: dict[str | None, RequestQueue] = {}
        self._len = 0

    def _queue_of(self, request: Request) -> RequestQueue:
        queue = self._queues.get(request.tenant)
        if queue is None:
            queue = self._queues[request.tenant] = self._make_queue()
        return queue

    def add(self, request: Request) -> None:
        self._queue_of(request).add(request)
        self._len += 1

    def prepend(self, request: Request) -> None:
        self._queue_of(request).prepend(request)
        self._len += 1

    def _order(self) -> list[str | None]:
        """Tenants with waiting requests, the one furthest below its share first (ties: the
        policy's order of their heads)."""
        running = Counter(r.tenant for r in self._running())

        def key(tenant: str | None) -> tuple:
            head = self._queues[tenant].peek()
            share = running[tenant] / max(head.tenant_weight, 1)
            return (share, head.priority if self._by_priority else 0, head.arrival_time)

        return sorted((t for t, q in self._queues.items() if q), key=key)

    def _next_tenant(self) -> str | None:
        if len(self._queues) == 1:  # the common case (no tenants): no counting
            return next(iter(self._queues))
        order = self._order()
        if not order:
            raise IndexError("the queue is empty")
        return order[0]

    def peek(self) -> Request:
        return self._queues[self._next_tenant()].peek()

    def pop(self) -> Request:
        tenant = self._next_tenant()
        queue = self._queues[tenant]
        request = queue.pop()
        self._len -= 1
        if not queue:
            del self._queues[tenant]
        return request

    def remove(self, request: Request) -> None:
        queue = self._queues.get(request.tenant)
        if queue is None:
            raise ValueError(f"{request} is not in the queue")
        queue.remove(request)
        self._len -= 1
        if not queue:
            del self._queues[request.tenant]

    def __iter__(self) -> Iterator[Request]:
        for tenant in self._order():
            yield from self._queues[tenant]

    def __len__(self) -> int:
        return self._len
