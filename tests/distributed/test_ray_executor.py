"""-tp 2 through Ray (--distributed-executor-backend ray): the test starts a one-node Ray cluster
on loopback (`ray start --head --block`, stopped again by its process group), the engine joins it
by address, places its two ranks with a placement group, and the greedy tokens equal HF
transformers' (which the -tp 1 engine's equal: tests/distributed/test_tensor_parallel.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pagedllm import LLM
from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS, greedy
from tests.entrypoints.conftest import free_port
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

RAY_START_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """The address of a Ray head on 127.0.0.1 with 2 CPUs, this module's alone."""
    port = free_port()
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
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
        os.killpg(proc.pid, signal.SIGTERM)  # the head and the processes it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


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


def test_tp2_through_ray_equals_hf(ray_cluster, tiny_llama_dir):
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB", max_num_batched_tokens=16,
              tensor_parallel_size=2, distributed_executor_backend="ray",
              ray_address=ray_cluster)
    try:
        assert greedy(llm, prompts) == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    finally:
        llm.llm_engine.engine_core.shutdown()
