"""Per-key fair share of a saturated batch (core/sched/fair_share.py): requests carry their API
key's name (tenant) and `fair_share` weight; the waiting queue hands each free slot to the
tenant furthest below its share, so a flooding key cannot starve another one. Without tenants
the order is the policy's own (FCFS here), which the first test checks as the baseline."""

from __future__ import annotations

import pytest

from tests.core.core_helpers import FakeRunner, make_request, make_scheduler, step


def _request(tenant: str | None, number: int, weight: int = 1, max_tokens: int = 20):
    request = make_request(f"{tenant}{number}", 5, max_tokens=max_tokens,
                           arrival_time=float(number))
    request.tenant, request.tenant_weight = tenant, weight
    return request


def _running_by_tenant(scheduler) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for request in scheduler.running:
        counts[request.tenant] = counts.get(request.tenant, 0) + 1
    return counts


@pytest.mark.parametrize("tenants", [False, True], ids=["no-keys", "two-keys"])
def test_a_flooding_key_leaves_the_other_its_share(tenants: bool) -> None:
    scheduler = make_scheduler(max_num_seqs=4, num_blocks=256)
    runner = FakeRunner()
    for number in range(8):  # the flood arrives first
        scheduler.add_request(_request("flood" if tenants else None, number))
    for number in (8, 9):
        request = _request("calm" if tenants else None, number)
        request.request_id = f"calm{number}"
        scheduler.add_request(request)
    so, _ = step(scheduler, runner)
    calm = {r for r in so.num_scheduled_tokens if r.startswith("calm")}
    if not tenants:  # FCFS: the flood's four oldest take the whole batch
        assert calm == set() and len(so.num_scheduled_tokens) == 4
        return
    assert calm == {"calm8", "calm9"}  # its fair half of the batch, at once
    assert _running_by_tenant(scheduler) == {"flood": 2, "calm": 2}
    assert [r.request_id for r in scheduler.waiting][:1] == ["flood2"]  # FCFS within a key


def test_a_freed_slot_goes_to_the_key_below_its_share() -> None:
    scheduler = make_scheduler(max_num_seqs=3, num_blocks=256)
    runner = FakeRunner()
    scheduler.add_request(_request("flood", 0, max_tokens=2))  # finishes first
    for number in range(1, 6):
        scheduler.add_request(_request("flood", number))
    step(scheduler, runner)
    assert _running_by_tenant(scheduler) == {"flood": 3}  # nobody else: the whole batch
    scheduler.add_request(_request("calm", 6))  # arrives after flood3..5, still goes first
    step(scheduler, runner)  # flood0 finishes here
    so, _ = step(scheduler, runner)
    assert "calm6" in so.num_scheduled_tokens
    assert not {"flood3", "flood4", "flood5"} & set(so.num_scheduled_tokens)
    assert _running_by_tenant(scheduler) == {"flood": 2, "calm": 1}


def test_weights_split_the_batch_in_proportion() -> None:
    scheduler = make_scheduler(max_num_seqs=4, num_blocks=256)
    runner = FakeRunner()
    for number in range(6):
        scheduler.add_request(_request("small", number, weight=1))
    for number in range(6, 12):
        scheduler.add_request(_request("big", number, weight=3))
    step(scheduler, runner)
    assert _running_by_tenant(scheduler) == {"big": 3, "small": 1}
