import pytest

from pagedllm.core.sched.queue import create_request_queue
from tests.core.core_helpers import make_request


def test_fcfs_order_and_prepend() -> None:
    queue = create_request_queue("fcfs")
    a, b, c = (make_request(x, 2) for x in "abc")
    queue.add(a)
    queue.add(b)
    queue.prepend(c)
    assert [r.request_id for r in queue] == ["c", "a", "b"]
    queue.remove(a)
    assert [r.request_id for r in queue] == ["c", "b"] and bool(queue)
    assert queue.pop() is c and queue.peek() is b and len(queue) == 1


def test_priority() -> None:
    queue = create_request_queue("priority")
    reqs = [
        make_request("late-urgent", 2, priority=0, arrival_time=3.0),
        make_request("early-low", 2, priority=1, arrival_time=1.0),
        make_request("early-urgent", 2, priority=0, arrival_time=2.0),
    ]
    for r in reqs:
        queue.add(r)
    assert [r.request_id for r in queue] == ["early-urgent", "late-urgent", "early-low"]
    queue.remove(reqs[0])
    assert queue.pop().request_id == "early-urgent"
    preempted = reqs[2]
    queue.prepend(preempted)
    assert queue.peek() is preempted
    assert len(queue) == 2
    with pytest.raises(ValueError):
        queue.remove(reqs[0])


def test_unknown_policy() -> None:
    with pytest.raises(ValueError):
        create_request_queue("lifo")
