"""-tp 2 through Ray (--distributed-executor-backend ray): the test starts a one-node Ray cluster
on loopback (`ray start --head --block`, stopped again by its process group), the engine joins it
by address, places its two ranks with a placement group, and the greedy tokens equal HF
transformers' (which the -tp 1 engine's equal: tests/distributed/test_tensor_parallel.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.executor.multiproc_executor import WorkerDied
from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, greedy
from tests.distributed.test_tensor_parallel_server import DEATH_SECONDS
from tests.entrypoints.conftest import free_port, serve_module
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

RAY_START_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The address of a Ray head on 127.0.0.1 with 2 CPUs, this module's alone."""
    yield from ray_head(tmp_path_factory, num_cpus=2)


def ray_head(tmp_path_factory, num_cpus: int):
    """Start a Ray head on 127.0.0.1 offering `num_cpus` (Ray's accounting: placement only),
    yield its address, stop it (tests/distributed/test_ray_data_parallel.py shares it)."""
    port = free_port()
    # (not under tmp_path: Ray's socket paths, e.g. <temp>/session_<date>_<pid>/sockets/
    # plasma_store, must fit AF_UNIX's 107 bytes, and pytest's basetemp grows with its counter)
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
           "--disable-usage-stats", "--object-store-memory=80000000", f"--temp-dir={temp_dir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_head(address, proc)
        yield address
    finally:
        import ray

        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):  # (a head that failed to start is gone)
            os.killpg(proc.pid, signal.SIGTERM)  # the head and the processes it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_head(address: str, proc: subprocess.Popen) -> None:
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    deadline = time.monotonic() + RAY_START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start exited"
        status = subprocess.run([ray_bin, "status", f"--address={address}"],
                                capture_output=True, text=True)
        if status.returncode == 0:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the Ray head at {address} did not come up")


@pytest.fixture(scope="module")
def ray_llm(ray_cluster, tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              tensor_parallel_size=2, distributed_executor_backend="ray",
              ray_address=ray_cluster)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_tp2_through_ray_equals_hf(ray_llm, tiny_llama_dir):
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    assert greedy(ray_llm, prompts) == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]


def test_killed_ray_actor_fails_the_step(ray_llm):
    """(Last: it kills the module's engine.) SIGKILL of one rank's Ray actor mid-request: Ray
    fails the pending call on that actor and the step raises WorkerDied within seconds, though
    the other actor is blocked in a collective with the dead one (the server turns this into
    an error event and 503: test_tensor_parallel_server.py for the mp backend, and
    test_killed_ray_actor_fails_the_stream_and_health below when asked)."""
    import ray

    engine = ray_llm.llm_engine
    executor = engine.engine_core.engine_core.executor
    pid = ray.get(executor._actors[1].pid.remote())
    engine.add_request("long", {"prompt_token_ids": [5, 6, 7]},
                       SamplingParams(max_tokens=400, ignore_eos=True))
    engine.step()
    engine.step()
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(WorkerDied, match="worker rank 1 failed"):
        for _ in range(400):
            engine.step()
    assert time.monotonic() - killed < DEATH_SECONDS


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "ray_server", "-tp", "2",
                            "--distributed-executor-backend", "ray", "--ray-address",
                            ray_cluster, "--kv-cache-memory", "16MiB",
                            "--served-model-name", "tiny")


@pytest.mark.skipif(not os.environ.get("PAGEDLLM_TEST_RAY_SERVER"),
                    reason="a server over Ray takes ~30 s to start: set "
                           "PAGEDLLM_TEST_RAY_SERVER=1 to run it")
def test_killed_ray_actor_fails_the_stream_and_health(ray_server):
    """SIGKILL of one rank's Ray actor mid-stream: Ray fails the step's pending call on that
    actor, the engine core stops with WorkerDied, the stream ends with an error and /health and
    the next request answer 503, within seconds (the other actor, blocked in a collective with
    the dead one, is killed with the engine core's executor)."""
    match = re.search(r"started 2 Ray actors \(pids \[(\d+), (\d+)\]", ray_server.log())
    assert match, ray_server.log()[-2000:]
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400,
            "ignore_eos": True, "temperature": 0, "stream": True}
    with httpx.Client(base_url=ray_server.url, timeout=DEATH_SECONDS) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is running
            os.kill(int(match[2]), signal.SIGKILL)
            killed = time.monotonic()
            rest = list(lines)  # ends (error event, then the end); a hang times out above
        assert time.monotonic() - killed < DEATH_SECONDS
        assert any("error" in line for line in rest), rest[-3:]
        while http.get("/health").status_code != 503:
            assert time.monotonic() - killed < DEATH_SECONDS, "still healthy"
            time.sleep(0.2)
        assert http.post("/v1/completions", json={**body, "stream": False}).status_code == 503
    print(f"503 after {time.monotonic() - killed:.1f} s")
