"""Data-parallel engine cores as Ray actors (`-dp 2 --data-parallel-backend ray`) on a one-node
Ray cluster that the module starts on loopback (one cluster for every test here): greedy tokens
equal a DP=1 engine's and HF transformers', offline and through `pagedllm serve` (both cores
serve, one /metrics view with an engine label per core); SIGKILL of one core's actor while idle
is seen within seconds and the core is restarted into its bundle while the other serves, as
with the mp cores. And a Ray executor rank (-tp 2 over Ray) killed while the engine is idle is
found by the idle health check within seconds, not at the next request."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.executor.multiproc_executor import WorkerDied
from tests.distributed.test_ray_executor import ray_head
from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, greedy
from tests.distributed.test_tensor_parallel_server import DEATH_SECONDS
from tests.entrypoints.conftest import serve_module
from tests.entrypoints.test_data_parallel_server import per_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

pytestmark = pytest.mark.timeout(300)

ENGINE = {"kv_cache_memory": "16MiB", "max_num_batched_tokens": 16}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    # 6 CPUs of Ray accounting (2 DP cores offline, 2 behind the server, 2 TP ranks): only
    # placement, the processes share the machine's cores
    yield from ray_head(tmp_path_factory, num_cpus=6)


@pytest.fixture(scope="module")
def prompts_and_reference(tiny_llama_dir) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """Random prompts, and the greedy tokens (which must equal HF's) and texts of a DP=1
    engine."""
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    llm = LLM(tiny_llama_dir, **ENGINE)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
    finally:
        llm.llm_engine.shutdown()
    reference = [list(o.token_ids) for o in outputs]
    assert reference == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    return prompts, reference, [o.text for o in outputs]


def test_dp2_ray_offline_equals_dp1_and_hf(ray_cluster, tiny_llama_dir, prompts_and_reference):
    import ray

    prompts, reference, _ = prompts_and_reference
    llm = LLM(tiny_llama_dir, data_parallel_size=2, data_parallel_backend="ray",
              data_parallel_size_local=1, ray_address=ray_cluster, **ENGINE)
    try:
        client = llm.llm_engine.engine_core
        assert [type(core).__name__ for core in client.cores] == ["RayCoreClient"] * 2
        # two actors, each its own process (not this one)
        pids = [core.pid for core in client.cores]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert ray.get([core._actor.pid.remote() for core in client.cores]) == pids
        # core 0 on this (the driver's) node, as data_parallel_size_local=1 asks; both cores
        # share the one node, so each binds its threads as one of two cores there
        here = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}[
            ray.get_runtime_context().get_node_id()]
        assert [core.node_ip for core in client.cores] == [here, here]
        slots = client._placement.slots
        assert [(slot.rank_local, slot.size_local) for slot in slots] == [(0, 2), (1, 2)]
        assert greedy(llm, prompts * 2) == reference * 2  # (both cores take requests)
        served = {client.engine_index_of(str(i)) for i in range(len(prompts) * 2)}
        assert client.router is not None
        assert served <= {0, 1}
    finally:
        llm.llm_engine.shutdown()


def test_idle_ray_rank_death_is_seen_by_the_health_check(ray_cluster, tiny_llama_dir):
    """-tp 2 over Ray, idle: SIGKILL of rank 1's actor makes check_health (what the engine
    core's idle loop calls every 0.5 s, which then ends the core) raise WorkerDied within
    seconds, though no step is waiting on the rank."""
    import ray

    llm = LLM(tiny_llama_dir, tensor_parallel_size=2, distributed_executor_backend="ray",
              ray_address=ray_cluster, **ENGINE)
    core = llm.llm_engine.engine_core.engine_core
    try:
        core.check_health()  # alive: no error
        pid = ray.get(core.executor._actors[1].pid.remote())
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(WorkerDied, match="worker rank 1 failed"):
            while time.monotonic() - killed < DEATH_SECONDS:
                core.check_health()
                time.sleep(0.5)
        assert time.monotonic() - killed < DEATH_SECONDS
    finally:
        llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def ray_dp_server(ray_cluster, tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "ray_dp_server", "-dp", "2",
                            "--data-parallel-backend", "ray", "--ray-address", ray_cluster,
                            "--kv-cache-memory", "16MiB", "--served-model-name", "tiny")


def _complete(url: str, prompt: list[int]) -> str:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_dp2_ray_server_equals_dp1_and_both_cores_serve(ray_dp_server, prompts_and_reference):
    prompts, _, reference = prompts_and_reference
    with ThreadPoolExecutor(len(prompts) * 2) as pool:
        tokens = list(pool.map(lambda p: _complete(ray_dp_server.url, p), prompts * 2))
    assert tokens == reference * 2
    with httpx.Client(base_url=ray_dp_server.url) as http:
        served = per_engine(http, "pagedllm:request_success_total", finished_reason="length")
        blocks = per_engine(http, "pagedllm:num_kv_cache_blocks")
    assert set(served) == {"0", "1"} and sum(served.values()) == len(prompts) * 2, served
    assert min(served.values()) >= 1, served
    assert set(blocks) == {"0", "1"} and min(blocks.values()) > 0


def test_killed_idle_dp_actor_is_restarted_while_the_other_serves(ray_dp_server,
                                                                  prompts_and_reference):
    """(Last: it kills a core.) SIGKILL of core 1's actor while idle: its reader sees the actor
    die within seconds (the log says so), /health stays 200 and requests go to core 0 while
    core 1 is restarted (--restart-engine-on-failure, the default), then both serve again."""
    prompts, _, reference = prompts_and_reference
    found = dict(re.findall(r"data-parallel engine core (\d+): pid (\d+) on", ray_dp_server.log()))
    assert sorted(found) == ["0", "1"], ray_dp_server.log()[-2000:]
    os.kill(int(found["1"]), signal.SIGKILL)
    killed = time.monotonic()
    while "data-parallel engine core 1 (pid" not in ray_dp_server.log():
        assert time.monotonic() - killed < DEATH_SECONDS, ray_dp_server.log()[-2000:]
        time.sleep(0.2)
    assert httpx.get(f"{ray_dp_server.url}/health").status_code == 200
    assert _complete(ray_dp_server.url, prompts[0]) == reference[0]
    while "data-parallel engine core 1 restarted" not in ray_dp_server.log():
        assert time.monotonic() - killed < 120, ray_dp_server.log()[-2000:]
        time.sleep(0.5)
    assert httpx.get(f"{ray_dp_server.url}/health").status_code == 200
    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(lambda p: _complete(ray_dp_server.url, p), prompts)) == reference
