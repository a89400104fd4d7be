"""Engine supervision through a real `pagedllm serve`: `kill -9` of the engine core with a
streaming and a non-streaming request in flight. Both clients get an OpenAI-style error within
seconds, /health turns 503, the core restarts (the same socket serves again). A hung core
(SIGSTOP) is killed by the watchdog and restarted the same way, busy or idle (an idle core's
heartbeats stop: /health turns 503 within the hang timeout); past --max-engine-restarts the
server stays up answering 503."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from tests.entrypoints.conftest import serve_module
from tests.entrypoints.test_openai_server import metrics

MODEL = "tiny"
MAX_TOKENS = 8000
"""Far more than the tiny model makes in the seconds the test needs (see test_deadline_server)."""
ERROR_WITHIN_S = 5.0
HANG_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def server(tiny_llama_factory, tmp_path_factory):
    model = tiny_llama_factory(max_position_embeddings=MAX_TOKENS + 512)
    yield from serve_module(model, tmp_path_factory, "supervision",
                            "--served-model-name", MODEL, "--kv-cache-memory", "16MiB",
                            "--max-engine-restarts", "3",
                            "--engine-hang-timeout", str(HANG_TIMEOUT_S))


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _body(stream: bool) -> dict:
    return {"model": MODEL, "prompt": "once upon a time", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": stream}


def _engine_pids(server) -> list[int]:
    """Engine-core pids in start order (the first from the load line, then each restart's)."""
    log = server.log()
    first = [int(p) for p in re.findall(r"engine core pid (\d+)", log)]
    return first + [int(p) for p in re.findall(r"engine core restarted \(pid (\d+)\)", log)]


def _wait_health(http: httpx.Client, status: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if http.get("/health").status_code == status:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"/health did not turn {status} within {within} s")


def test_kill_9_fails_in_flight_requests_then_restarts(server, http):
    pid = _engine_pids(server)[-1]
    whole: dict = {}

    def post_whole() -> None:
        response = http.post("/v1/completions", json=_body(False))
        whole.update(status=response.status_code, body=response.json(), at=time.monotonic())

    with http.stream("POST", "/v1/completions", json=_body(True)) as response:
        assert response.status_code == 200
        lines = (line for line in response.iter_lines() if line)
        first = json.loads(next(lines).removeprefix("data: "))
        assert first["choices"][0]["text"] is not None  # the stream is under way
        worker = threading.Thread(target=post_whole)
        worker.start()
        time.sleep(0.5)  # the non-streaming request is in the engine too
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        rest = list(lines)
        stream_ended = time.monotonic() - killed_at
    worker.join(30)

    # streaming: tokens, then one OpenAI-style error event, then [DONE]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_unavailable", error
    assert "SIGKILL" in error["message"], error
    assert stream_ended < ERROR_WITHIN_S
    # non-streaming: a 503 with an error body
    assert whole["status"] == 503, whole
    assert whole["body"]["error"]["code"] == "engine_unavailable"
    assert whole["at"] - killed_at < ERROR_WITHIN_S

    # the core restarts behind the same socket; new requests succeed on the new core
    _wait_health(http, 200, 120)
    assert _engine_pids(server)[-1] != pid
    response = http.post("/v1/completions", json={**_body(False), "max_tokens": 5})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5
    m = metrics(http)
    assert m["pagedllm:engine_core_deaths_total"] == 1
    assert m["pagedllm:engine_core_restarts_total"] == 1
    assert m["pagedllm:num_requests_running"] == 0


def test_hung_core_is_killed_and_restarted(server, http):
    pid = _engine_pids(server)[-1]
    with http.stream("POST", "/v1/completions", json=_body(True)) as response:
        lines = (line for line in response.iter_lines() if line)
        next(lines)
        os.kill(pid, signal.SIGSTOP)  # alive, but its step loop no longer ticks
        stopped_at = time.monotonic()
        rest = list(lines)
        ended = time.monotonic() - stopped_at
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert "made no progress" in error["message"], error
    # (the clock starts at the last output, a moment before the SIGSTOP)
    assert HANG_TIMEOUT_S - 0.5 <= ended < HANG_TIMEOUT_S + ERROR_WITHIN_S
    _wait_health(http, 200, 120)
    assert _engine_pids(server)[-1] != pid
    assert http.post("/v1/completions", json={**_body(False), "max_tokens": 3}).status_code == 200
    m = metrics(http)
    assert m["pagedllm:engine_core_hangs_total"] == 1
    assert m["pagedllm:engine_core_restarts_total"] == 2


def test_idle_core_that_stops_ticking_turns_unhealthy_and_restarts(server, http):
    pid = _engine_pids(server)[-1]
    time.sleep(1.0)  # idle for a few heartbeats: healthy
    assert http.get("/health").status_code == 200
    os.kill(pid, signal.SIGSTOP)  # the process exists, its loop sends nothing
    took = _wait_health(http, 503, HANG_TIMEOUT_S + ERROR_WITHIN_S)
    assert took < HANG_TIMEOUT_S + 1.5, took
    _wait_health(http, 200, 120)
    assert _engine_pids(server)[-1] != pid
    assert http.post("/v1/completions", json={**_body(False), "max_tokens": 3}).status_code == 200
    m = metrics(http)
    assert m["pagedllm:engine_core_hangs_total"] == 2
    assert m["pagedllm:engine_core_restarts_total"] == 3


def test_past_max_restarts_the_server_stays_up_and_unhealthy(server, http):
    os.kill(_engine_pids(server)[-1], signal.SIGKILL)
    assert _wait_health(http, 503, ERROR_WITHIN_S) < ERROR_WITHIN_S
    time.sleep(1.0)  # no restart comes (--max-engine-restarts 3 are spent)
    health = http.get("/health")
    assert health.status_code == 503
    assert "--max-engine-restarts" in health.json()["error"]["message"]
    response = http.post("/v1/completions", json={**_body(False), "max_tokens": 5})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_dead"
    assert server.proc.poll() is None  # the API server itself is still up
    assert metrics(http)["pagedllm:engine_core_deaths_total"] == 4
