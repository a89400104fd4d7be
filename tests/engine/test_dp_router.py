"""DPRouter: load balancing, prefix-aware routing and the per-core books (no model, no process)."""

from __future__ import annotations

import pytest

from pagedllm.engine.dp_router import WAITING_WEIGHT, DPRouter, NoLiveCoreError

BLOCK = 4


def prompt(seed: int, length: int = 3 * BLOCK) -> list[int]:
    return [seed * 1000 + i for i in range(length)]


def test_distinct_prompts_spread_evenly():
    router = DPRouter(2, BLOCK)
    cores = [router.route(f"r{i}", prompt(i)) for i in range(8)]
    assert cores.count(0) == cores.count(1) == 4
    assert [load.waiting for load in router.loads] == [4, 4]


def test_waiting_weighs_more_than_running():
    router = DPRouter(2, BLOCK)
    router.loads[0].running = 3
    router.loads[1].waiting = 1  # one waiting request (score 4) > three running ones (score 3)
    assert router.route("new", prompt(9)) == 0


def test_kv_usage_breaks_ties():
    router = DPRouter(2, BLOCK)
    router.report(0, 0.9)
    assert router.route("a", prompt(1)) == 1


def test_shared_prefix_sticks_until_the_core_is_much_busier():
    router = DPRouter(2, BLOCK)
    shared = prompt(7, 2 * BLOCK)
    first = router.route("a", shared + [1, 2, 3, 4])
    # the second request with that prefix follows it although the other core is idle
    assert router.route("b", shared + [5, 6, 7, 8]) == first
    # ... until the prefix's core is more than (1.25 * min + one waiting request) busier
    cores = [router.route(f"c{i}", shared + [i] * BLOCK) for i in range(6)]
    assert 1 - first in cores
    scores = [load.score for load in router.loads]
    assert abs(scores[0] - scores[1]) <= 2 * WAITING_WEIGHT  # the flood stays spread


def test_longest_prefix_wins():
    router = DPRouter(3, BLOCK)
    system = prompt(1, BLOCK)
    conversation = system + prompt(2, 2 * BLOCK)
    a = router.route("a", conversation)
    router.release(["a"])
    # another request with only the system block went elsewhere meanwhile
    router._prefix_core[router._block_hashes(system, None)[0]] = (a + 1) % 3
    assert router.route("b", conversation + prompt(3, BLOCK)) == a


def test_least_loaded_policy_ignores_prefixes():
    router = DPRouter(2, BLOCK, prefix_aware=False)
    same = prompt(5)
    assert [router.route(f"r{i}", same) for i in range(4)] == [0, 1, 0, 1]


def test_short_prompt_and_lora_do_not_share_a_prefix():
    router = DPRouter(2, BLOCK)
    assert router._block_hashes([1, 2], None) == []
    assert router._block_hashes(prompt(1), "adapter") != router._block_hashes(prompt(1), None)


def test_books_follow_requests_through_start_and_release():
    router = DPRouter(2, BLOCK)
    a, b = router.route("a", prompt(1)), router.route("b", prompt(2))
    assert a != b
    router.started(["a", "unknown"])
    assert (router.loads[a].waiting, router.loads[a].running) == (0, 1)
    assert router.release(["a", "b", "gone"]) == {a: ["a"], b: ["b"]}
    assert [(load.waiting, load.running) for load in router.loads] == [(0, 0), (0, 0)]
    assert router.owner("a") is None and router.release(["a"]) == {}


def test_dead_core_names_its_requests_and_gets_no_more():
    router = DPRouter(2, BLOCK)
    owners = {f"r{i}": router.route(f"r{i}", prompt(i)) for i in range(4)}
    lost = router.core_died(1)
    assert sorted(lost) == sorted(r for r, core in owners.items() if core == 1)
    assert all(router.owner(r) is None for r in lost)
    assert {router.route(f"n{i}", prompt(i)) for i in range(4)} == {0}  # prefixes included
    router.core_died(0)
    with pytest.raises(NoLiveCoreError):
        router.route("late", prompt(1))


def test_each_core_gets_its_seed_and_share_of_the_cores(monkeypatch):
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.dp_client import core_engine_args
    from pagedllm.utils.system import physical_cores

    monkeypatch.delenv("PAGEDLLM_NUM_THREADS", raising=False)
    args = EngineArgs(model="m", seed=7, data_parallel_size=2)
    cores = [core_engine_args(args, rank, 2) for rank in range(2)]
    assert [c.seed for c in cores] == [7, 8]
    assert [c.num_threads for c in cores] == [max(1, physical_cores() // 2)] * 2
    assert all(c.data_parallel_size == 1 for c in cores)  # a core is not data parallel itself
    with_tp = EngineArgs(model="m", data_parallel_size=2, tensor_parallel_size=2)
    assert core_engine_args(with_tp, 0, 2).num_threads == max(1, physical_cores() // 4)
    assert core_engine_args(EngineArgs(num_threads=3), 1, 2).num_threads == 3  # the user's
    monkeypatch.setenv("PAGEDLLM_NUM_THREADS", "1")
    assert core_engine_args(args, 0, 2).num_threads is None  # the core reads the variable
