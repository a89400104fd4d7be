"""`pagedllm serve -dp 2` with the real SmolLM2 Q4_1: two engine-core processes behind one server.
Greedy answers (served, and offline with DP=2) equal one offline engine's, requests spread over
both cores (per-engine metrics), a client disconnect aborts on the core that holds the request,
and kill -9 of one core fails that core's stream within seconds while the other core's finishes
and the server goes on serving on it; the dead core is restarted (--restart-engine-on-failure,
the default) and serves again."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.entrypoints.conftest import serve_module

pytestmark = [pytest.mark.gguf, pytest.mark.timeout(300)]

MODEL = "SmolLM2-135M-Instruct"
ENGINE_FLAGS = ("--kv-cache-memory", "128MiB", "--max-model-len", "2048", "--max-num-seqs", "16")
PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
    "The three primary colours are", "My favourite recipe for bread needs",
    "In 1969 the first humans", "A haiku about the sea:", "The quick brown fox",
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def dp_server(smollm2_gguf_path, tmp_path_factory):
    yield from serve_module(MODEL, tmp_path_factory, "dp_server", "-dp", "2", *ENGINE_FLAGS)


@pytest.fixture(scope="module")
def http(dp_server):
    with httpx.Client(base_url=dp_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference_texts(smollm2_gguf_path) -> list[str]:
    """One offline engine (DP=1) in this process."""
    from pagedllm import LLM, SamplingParams

    llm = LLM(MODEL, kv_cache_memory="32MiB", max_model_len=512, num_threads=1)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def per_engine(http: httpx.Client, name: str, **labels: str) -> dict[str, float]:
    """engine label -> value of the series `name` with these labels."""
    values = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values[sample.labels["engine"]] = sample.value
    return values


def core_pids(dp_server) -> dict[int, int]:
    found = re.findall(r"data-parallel engine core (\d+): pid (\d+)", dp_server.log())
    return {int(rank): int(pid) for rank, pid in found}


def test_greedy_answers_match_one_engine_and_both_cores_serve(dp_server, http, reference_texts):
    client = openai.OpenAI(base_url=f"{dp_server.url}/v1", api_key="EMPTY", max_retries=0)
    success = "pagedllm:request_success_total"
    before = per_engine(http, success, finished_reason="length")

    def complete(prompt: str) -> str:
        return client.completions.create(model=MODEL, prompt=prompt, temperature=0,
                                         max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True},
                                         ).choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        texts = list(pool.map(complete, PROMPTS))
    assert texts == reference_texts
    after = per_engine(http, success, finished_reason="length")
    served = {engine: after[engine] - before.get(engine, 0.0) for engine in after}
    assert set(served) == {"0", "1"}
    assert min(served.values()) >= 2 and sum(served.values()) == len(PROMPTS), served
    blocks = per_engine(http, "pagedllm:num_kv_cache_blocks")
    assert set(blocks) == {"0", "1"} and min(blocks.values()) > 0


@pytest.mark.slow
def test_offline_dp2_answers_match_one_engine(reference_texts):
    from pagedllm import LLM, SamplingParams

    llm = LLM(MODEL, kv_cache_memory="32MiB", max_model_len=512, data_parallel_size=2)
    try:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()
    assert [o.outputs[0].text for o in outputs] == reference_texts


def _wait_running(http: httpx.Client, predicate, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        running = per_engine(http, "pagedllm:num_requests_running")
        if predicate(running) or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def test_disconnect_aborts_on_the_core_that_holds_the_request(dp_server, http):
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 2000, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
        running = _wait_running(http, lambda r: sum(r.values()) == 1)
        assert sorted(running.values()) == [0.0, 1.0], running
        owner = next(engine for engine, value in running.items() if value == 1)
    # had the abort gone to the other core, the owner would decode for ~2000 more tokens
    running = _wait_running(http, lambda r: r[owner] == 0, timeout=3.0)
    assert running[owner] == 0, running
    assert per_engine(http, "pagedllm:kv_cache_usage_perc")[owner] == 0


def _stream(url: str, prompt: str, max_tokens: int, started: threading.Event,
            result: dict) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0}
    lines = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line:
                lines.append(line)
                started.set()
    result["lines"], result["ended"] = lines, time.monotonic()


def test_kill_9_of_one_core_fails_its_requests_and_restarts_it(dp_server, http):
    pids = core_pids(dp_server)
    assert sorted(pids) == [0, 1], dp_server.log()
    results: list[dict] = [{}, {}]
    started = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_stream, args=(dp_server.url, PROMPTS[i], tokens,
                                                      started[i], results[i]))
               for i, tokens in enumerate((450, 120))]
    threads[0].start()  # a long stream on one core: that core gets killed
    assert started[0].wait(30)
    running = _wait_running(http, lambda r: sum(r.values()) == 1)
    victim = next(engine for engine, value in running.items() if value == 1)
    survivor = "1" if victim == "0" else "0"
    threads[1].start()  # a shorter one, which the router sends to the other core
    assert started[1].wait(30)
    running = _wait_running(http, lambda r: r == {"0": 1.0, "1": 1.0})
    assert running == {"0": 1.0, "1": 1.0}, running
    aborts = per_engine(http, "pagedllm:request_success_total", finished_reason="abort")
    killed = time.monotonic()
    os.kill(pids[int(victim)], signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    victim_lines, survivor_lines = results[0]["lines"], results[1]["lines"]
    assert any("engine_unavailable" in line for line in victim_lines), victim_lines[-3:]
    assert results[0]["ended"] - killed < 10
    assert victim_lines[-1] == "data: [DONE]"
    # the other core's request went on to its end
    assert survivor_lines[-1] == "data: [DONE]"
    assert not any("error" in line for line in survivor_lines), survivor_lines[-3:]
    # the other core serves while the dead one restarts
    assert http.get("/health").status_code == 200
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
    assert response.status_code == 200, response.text
    # the failed request is counted under the dead core, whose gauges no longer claim work
    after = per_engine(http, "pagedllm:request_success_total", finished_reason="abort")
    assert after[victim] == aborts[victim] + 1 and after[survivor] == aborts[survivor], after
    assert per_engine(http, "pagedllm:num_requests_running")[victim] == 0
    # the dead core comes back (a new process loading the model) and is routed to again
    deadline = time.monotonic() + 120
    while f"data-parallel engine core {victim} restarted" not in dp_server.log():
        assert time.monotonic() < deadline, dp_server.log()[-2000:]
        time.sleep(0.5)
    assert http.get("/health").status_code == 200
