"""-tp 2 over two Ray nodes in separate network namespaces, one rank per node: the head node
in one namespace, a worker node in another, joined by a veth pair (10.213.0.1 <-> 10.213.0.2)
and nothing else, so the ranks can only meet over that link. The driver (the engine core) runs
in the head's namespace, places one rank per node (each node offers one CPU) and its greedy
tokens must equal HF transformers'.

Needs root (ip netns) and ~1 minute, so it runs only when asked:
    PAGEDLLM_TEST_RAY_NETNS=1 PYTHONPATH=$PWD python -m pytest -s \
        tests/distributed/test_ray_two_nodes.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.distributed.test_tensor_parallel import LENGTHS, MAX_TOKENS
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

pytestmark = pytest.mark.skipif(
    not os.environ.get("PAGEDLLM_TEST_RAY_NETNS") or os.geteuid() != 0
    or shutil.which("ip") is None,
    reason="two Ray nodes in network namespaces: root, `ip` and PAGEDLLM_TEST_RAY_NETNS=1")

HEAD_IP, WORKER_IP, PORT = "10.213.0.1", "10.213.0.2", 6379
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

DRIVER = r"""
import json, sys, time
import ray
from pagedllm import LLM, SamplingParams

address, model, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
max_tokens = int(sys.argv[4])
# (the driver's own address: Ray's guess, by hostname, is unreachable from this namespace)
ray.init(address=address, _node_ip_address=address.split(":")[0])
deadline = time.monotonic() + 60
while sum(node["Alive"] for node in ray.nodes()) < 2:
    assert time.monotonic() < deadline, ray.nodes()
    time.sleep(0.5)
llm = LLM(model, kv_cache_memory="16MiB", max_num_batched_tokens=16, tensor_parallel_size=2,
          distributed_executor_backend="ray", ray_address=address)
actors = llm.llm_engine.engine_core.engine_core.executor._actors
node_ips = ray.get([actor.node_ip.remote() for actor in actors])
params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
start = time.perf_counter()
outputs = llm.generate(prompts, params, use_tqdm=False)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"node_ips": node_ips, "seconds": seconds,
                              "tokens": [o.outputs[0].token_ids for o in outputs]}))
llm.llm_engine.engine_core.shutdown()
"""


DP_DRIVER = r"""
import json, sys, time
import ray
from pagedllm import LLM, SamplingParams

address, model, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
max_tokens = int(sys.argv[4])
ray.init(address=address, _node_ip_address=address.split(":")[0])
deadline = time.monotonic() + 60
while sum(node["Alive"] for node in ray.nodes()) < 2:
    assert time.monotonic() < deadline, ray.nodes()
    time.sleep(0.5)
llm = LLM(model, kv_cache_memory="16MiB", max_num_batched_tokens=16, data_parallel_size=2,
          data_parallel_backend="ray", ray_address=address)
client = llm.llm_engine.engine_core
node_ips = [core.node_ip for core in client.cores]
params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
outputs = llm.generate(prompts, params, use_tqdm=False)
print("RESULT " + json.dumps({"node_ips": node_ips,
                              "tokens": [o.outputs[0].token_ids for o in outputs]}))
llm.llm_engine.shutdown()
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def two_nodes():
    """(head namespace, the cluster address): a head and a worker node, one CPU each."""
    suffix = os.getpid()
    head_ns, worker_ns = f"pgl-head-{suffix}", f"pgl-work-{suffix}"
    procs: list[subprocess.Popen] = []
    temps: list[str] = []
    _sh("ip", "netns", "add", head_ns)
    _sh("ip", "netns", "add", worker_ns)
    try:
        _sh("ip", "link", "add", f"vh{suffix}", "type", "veth", "peer", "name", f"vw{suffix}")
        for ns, link, ip in ((head_ns, f"vh{suffix}", HEAD_IP), (worker_ns, f"vw{suffix}",
                                                                  WORKER_IP)):
            _sh("ip", "link", "set", link, "netns", ns)
            # the same name in both: gloo is told which interface to use (GLOO_SOCKET_IFNAME)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", link, "name", "eth0")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
               "GLOO_SOCKET_IFNAME": "eth0", "RAY_USAGE_STATS_ENABLED": "0"}
        common = ["--block", "--num-cpus=1", "--object-store-memory=80000000"]
        # NOTE: short temp dirs: Ray's unix socket paths must stay under 108 bytes
        temp = tempfile.mkdtemp(prefix="pglray")
        temps.append(temp)
        for ns, args in (
            (head_ns, ["--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}",
                       "--include-dashboard=false", f"--temp-dir={temp}"]),
            (worker_ns, [f"--address={HEAD_IP}:{PORT}", f"--node-ip-address={WORKER_IP}"]),
        ):
            log = open(os.path.join(temp, f"{ns}.log"), "w")  # noqa: SIM115 - the child owns it
            cmd = ["ip", "netns", "exec", ns, RAY, "start", *args, *common]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            _wait_for_nodes(head_ns, env, procs[-1], temp, len(procs))
        yield head_ns, f"{HEAD_IP}:{PORT}", env
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, 9)
        subprocess.run(["ip", "netns", "del", head_ns])
        subprocess.run(["ip", "netns", "del", worker_ns])
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(ns: str, env: dict, proc: subprocess.Popen, temp: str, count: int) -> None:
    """Until the cluster lists `count` active nodes (asked from the head's namespace)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start exited: see " + temp
        status = subprocess.run(["ip", "netns", "exec", ns, RAY, "status",
                                 f"--address={HEAD_IP}:{PORT}"], capture_output=True,
                                text=True, env=env)
        active = status.stdout.split("Pending:")[0]
        if status.returncode == 0 and active.count(" node_") >= count:
            return
        time.sleep(1.0)
    raise TimeoutError(f"{count} Ray node(s) did not come up: see {temp}")


def test_tp2_over_two_ray_nodes_equals_hf(two_nodes, tiny_llama_dir):
    head_ns, address, env = two_nodes
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    driver = subprocess.run(
        ["ip", "netns", "exec", head_ns, sys.executable, "-c", DRIVER, address, tiny_llama_dir,
         json.dumps(prompts), str(MAX_TOKENS)],
        capture_output=True, text=True, env=env, timeout=240)
    lines = [line for line in driver.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, driver.stdout[-3000:] + driver.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    print(f"ranks on nodes {result['node_ips']}, generate {result['seconds']:.2f} s")
    assert sorted(result["node_ips"]) == [HEAD_IP, WORKER_IP]  # one rank per node
    assert result["tokens"] == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]


def test_dp2_over_two_ray_nodes_equals_hf(two_nodes, tiny_llama_dir):
    """-dp 2 --data-parallel-backend ray: one engine-core actor per node (each node offers one
    CPU, each core's bundle takes one), the driver talks to both over the veth only."""
    head_ns, address, env = two_nodes
    hf = load_hf_model(tiny_llama_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size) * 2
    driver = subprocess.run(
        ["ip", "netns", "exec", head_ns, sys.executable, "-c", DP_DRIVER, address,
         tiny_llama_dir, json.dumps(prompts), str(MAX_TOKENS)],
        capture_output=True, text=True, env=env, timeout=240)
    lines = [line for line in driver.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, driver.stdout[-3000:] + driver.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    print(f"engine cores on nodes {result['node_ips']}")
    assert sorted(result["node_ips"]) == [HEAD_IP, WORKER_IP]  # one core per node
    assert result["tokens"] == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
