"""CPU binding per rank (platforms/cpu_binding.py): the plan (a pure function of the cores, the
ranks on the machine and the threads) gives each rank a disjoint share of the allowed CPUs,
refuses to pin when ranks x threads exceed the cores (with the reason), honours nobind and
explicit lists. (That a -tp 2 server's worker processes really run with their rank's mask:
tests/distributed/test_tensor_parallel_server.py.)"""

from __future__ import annotations

import pytest

from pagedllm.platforms.cpu_binding import (
    format_cpu_list,
    parse_cpu_list,
    physical_core_groups,
    plan_cpu_binding,
)

EIGHT_HT = [(0, 4), (1, 5), (2, 6), (3, 7)]
"""Four physical cores with two hyper-threads each (Linux numbers siblings apart)."""


def _disjoint(cpus: list[tuple[int, ...]]) -> bool:
    flat = [cpu for group in cpus for cpu in group]
    return len(flat) == len(set(flat))


@pytest.mark.parametrize("cores, ranks, threads", [
    ([(0,), (1,)], 2, 1), ([(i,) for i in range(8)], 2, None), ([(i,) for i in range(8)], 3, 2),
    (EIGHT_HT, 2, None), (EIGHT_HT, 4, 1),
])  # fmt: skip
def test_ranks_get_disjoint_shares_of_whole_cores(cores, ranks, threads):
    plan = plan_cpu_binding(cores, ranks, threads)
    share = threads or len(cores) // ranks
    assert plan.cpus is not None and not plan.oversubscribed
    assert len(plan.cpus) == ranks and plan.threads == [share] * ranks
    assert _disjoint(plan.cpus)
    for cpus in plan.cpus:  # whole physical cores: both siblings or neither
        owned = [core for core in cores if set(core) & set(cpus)]
        assert len(owned) == share and all(set(core) <= set(cpus) for core in owned)


def test_too_many_ranks_are_not_pinned_and_say_why():
    plan = plan_cpu_binding([(0,), (1,)], 4, 1)
    assert plan.cpus is None and plan.oversubscribed
    assert "4 ranks x 1 threads = 4 > 2 cores" in plan.note
    plan = plan_cpu_binding([(0,), (1,)], 2, 2)
    assert plan.cpus is None and plan.oversubscribed


def test_one_rank_nobind_and_explicit_lists():
    assert plan_cpu_binding([(0,), (1,)], 1, None).cpus is None  # nobody to share with
    assert plan_cpu_binding([(0,), (1,)], 1, None).threads == [2]
    nobind = plan_cpu_binding([(0,), (1,)], 2, None, "nobind")
    assert nobind.cpus is None and nobind.threads == [1, 1] and not nobind.oversubscribed
    explicit = plan_cpu_binding([(i,) for i in range(8)], 2, None, "0-2|5,7")
    assert explicit.cpus == [(0, 1, 2), (5, 7)] and explicit.threads == [3, 2]
    with pytest.raises(ValueError, match="gives 1 CPU list"):
        plan_cpu_binding([(0,), (1,)], 2, None, "0-1")
    with pytest.raises(ValueError, match="not all allowed"):
        plan_cpu_binding([(0,), (1,)], 2, None, "0|9")


def test_cpu_lists_round_trip():
    assert parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpu_list((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    with pytest.raises(ValueError):
        parse_cpu_list("3-1")


def test_physical_cores_cover_the_allowed_cpus_once():
    import os

    groups = physical_core_groups()
    assert _disjoint(groups)
    assert {cpu for group in groups for cpu in group} == set(os.sched_getaffinity(0))
    assert physical_core_groups({0}) == [(0,)]
