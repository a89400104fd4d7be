"""`pagedllm serve -tp 2`: answers through the OpenAI client with the tokens of the offline
engine at -tp 1, and a worker rank killed with SIGKILL takes the engine down cleanly: the
in-flight stream ends with an error and /health answers 503 within seconds, nothing hangs."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import openai
import pytest

from pagedllm import LLM, SamplingParams
from tests.entrypoints.conftest import serve_module

PROMPT = "The quick brown fox"
DEATH_SECONDS = 10.0
"""How long the server may take to notice a dead rank (it takes well under a second)."""


@pytest.fixture(scope="module")
def tp_server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "tp_server", "-tp", "2",
                            "--kv-cache-memory", "16MiB", "--served-model-name", "tiny")


def test_tp2_server_tokens_equal_offline_tp1(tp_server, tiny_llama_dir):
    client = openai.OpenAI(base_url=f"{tp_server.url}/v1", api_key="unused")
    served = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16,
                                       temperature=0, extra_body={"ignore_eos": True})
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB")
    offline = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=16,
                                                    ignore_eos=True), use_tqdm=False)
    assert served.choices[0].text == offline[0].outputs[0].text
    assert "execution: fused_cpu_stack (tensor_parallel_size=2" in tp_server.log()


def worker_pids(log: str) -> list[int]:
    match = re.search(r"started 2 worker processes \(pids \[(\d+), (\d+)\]\)", log)
    assert match, log
    return [int(match[1]), int(match[2])]


def test_worker_ranks_run_on_their_planned_cpus(tp_server):
    """CPU binding (platforms/cpu_binding.py): each rank's worker process (the engine core's
    children), every thread of it, has its rank's share of the CPUs (PAGEDLLM_NUM_THREADS=1:
    one core each), or, where the machine has too few cores, the whole allowed set."""
    from pagedllm.platforms.cpu_binding import physical_core_groups, plan_cpu_binding

    plan = plan_cpu_binding(physical_core_groups(), 2, 1)
    assert plan.cpus is not None or len(physical_core_groups()) < 2
    assert "CPU binding of the 2 ranks on this machine" in tp_server.log()
    (engine_core,) = _children(tp_server.proc.pid)
    workers = _children(engine_core)
    assert len(workers) == 2, workers
    masks = []
    for pid in workers:
        threads = {frozenset(os.sched_getaffinity(int(tid)))
                   for tid in os.listdir(f"/proc/{pid}/task")}
        assert len(threads) == 1, (pid, threads)  # every thread alike
        masks.append(threads.pop())
    expected = ([set(os.sched_getaffinity(0))] * 2 if plan.cpus is None
                else [set(cpus) for cpus in plan.cpus])
    assert sorted(masks, key=min) == sorted(expected, key=min)


def test_killed_rank_fails_the_stream_and_health(tp_server):
    pids = worker_pids(tp_server.log())
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.Client(base_url=tp_server.url, timeout=DEATH_SECONDS) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is running
            os.kill(pids[1], signal.SIGKILL)
            killed = time.monotonic()
            rest = list(lines)  # ends (error event, then the end); a hang times out above
        assert time.monotonic() - killed < DEATH_SECONDS
        assert any("error" in line for line in rest), rest[-3:]
        while http.get("/health").status_code != 503:
            assert time.monotonic() - killed < DEATH_SECONDS, "still healthy"
            time.sleep(0.2)
        refused = http.post("/v1/completions", json={**body, "stream": False})
        assert refused.status_code == 503
    # The engine core's own line on why it stopped (written as it exits: allow for the flush)
    deadline = time.monotonic() + 10
    while "worker rank 1" not in tp_server.log():
        assert time.monotonic() < deadline, tp_server.log()[-2000:]
        time.sleep(0.2)


def test_idle_engine_core_exits_when_a_rank_dies(tiny_llama_dir):
    """No request in flight: the engine core's idle loop checks its ranks each second and
    exits with the dead rank's error; the other rank follows (its pipe closes)."""
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.core_client import MPClient

    client = MPClient(EngineArgs(model=tiny_llama_dir, kv_cache_memory="16MiB",
                                 tensor_parallel_size=2))
    try:
        children = _children(client.pid)
        assert len(children) >= 2, children
        os.kill(children[-1], signal.SIGKILL)
        killed = time.monotonic()
        while client.is_alive():
            assert time.monotonic() - killed < DEATH_SECONDS, "the engine core lives on"
            time.sleep(0.1)
        while any(_alive(pid) for pid in children):
            assert time.monotonic() - killed < DEATH_SECONDS, "a worker outlived its engine"
            time.sleep(0.1)
    finally:
        client.shutdown()


def _children(pid: int) -> list[int]:
    """The processes `pid` started (worker ranks, an engine core): its children, or, where they
    come from a forkserver (utils/process_start.py), the forkserver's; not a resource tracker."""
    import psutil

    started = []
    for child in psutil.Process(pid).children():
        cmdline = " ".join(child.cmdline())
        if "multiprocessing.forkserver" in cmdline:
            started += [grandchild.pid for grandchild in child.children()]
        elif "resource_tracker" not in cmdline:
            started.append(child.pid)
    return started


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
