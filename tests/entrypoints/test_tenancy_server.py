"""Per-request tenancy fields through a real `pagedllm serve` (one shared server):
`cache_salt` isolates the prefix cache, `priority` under `--scheduling-policy priority` lets an
urgent request preempt a running one."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.entrypoints.conftest import serve_module
from tests.entrypoints.test_openai_server import metrics

MODEL = "tiny"
API_KEY = "sk-tenancy-0123456789abcdef"
MAX_TOKENS = 8000
"""Far more than the tiny model makes in the seconds a test needs (see test_deadline_server)."""
SHARED_PROMPT = ("The history of the Roman Empire began with the founding of the city and ended "
                 "many centuries later, and the quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def server(tiny_llama_factory, tmp_path_factory):
    model = tiny_llama_factory(max_position_embeddings=MAX_TOKENS + 512)
    yield from serve_module(model, tmp_path_factory, "tenancy",
                            "--served-model-name", MODEL, "--kv-cache-memory", "16MiB",
                            "--scheduling-policy", "priority", "--max-num-seqs", "1",
                            "--api-key", API_KEY, "--log-format", "json", "--access-log")


@pytest.fixture(scope="module")
def http(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, timeout=60, headers=headers) as client:
        yield client


def _complete(http, **fields) -> dict:
    body = {"model": MODEL, "prompt": SHARED_PROMPT, "max_tokens": 1, "temperature": 0, **fields}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _hits_of(http, **fields) -> float:
    before = metrics(http)["pagedllm:prefix_cache_hits_total"]
    _complete(http, **fields)
    return metrics(http)["pagedllm:prefix_cache_hits_total"] - before


def test_cache_salt_isolates_the_prefix_cache(http):
    assert _hits_of(http, cache_salt="tenant-a") == 0  # first sight of the prompt
    assert _hits_of(http, cache_salt="tenant-b") == 0  # same prompt, another tenant
    assert _hits_of(http, cache_salt="tenant-a") > 0  # same tenant again: cached
    assert _hits_of(http) == 0  # no salt: shares nothing with the salted ones
    assert _hits_of(http) > 0
    # chat carries it too
    chat = {"model": MODEL, "messages": [{"role": "user", "content": SHARED_PROMPT}],
            "max_tokens": 1, "cache_salt": "tenant-c"}
    for expect_hit in (False, True):
        before = metrics(http)["pagedllm:prefix_cache_hits_total"]
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert (metrics(http)["pagedllm:prefix_cache_hits_total"] > before) is expect_hit


@pytest.mark.parametrize("salt", ["", "x" * 1025, 5])
def test_bad_cache_salt_is_a_400(http, salt):
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                  "cache_salt": salt})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cache_salt"


def test_bad_priority_is_a_400(http):
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                  "priority": 2**63})
    assert response.status_code == 400 and response.json()["error"]["param"] == "priority"


def test_urgent_request_preempts_a_running_one(http):
    """max_num_seqs 1: under fcfs the urgent request would wait for all 8000 tokens."""
    preempted_before = metrics(http)["pagedllm:num_preemptions_total"]
    background = {"model": MODEL, "prompt": "once upon a time", "max_tokens": MAX_TOKENS,
                  "temperature": 0, "ignore_eos": True, "stream": True, "priority": 10}
    urgent: dict = {}

    def post_urgent() -> None:
        start = time.monotonic()
        urgent["response"] = http.post("/v1/completions", json={
            "model": MODEL, "prompt": "what is the capital of France?", "max_tokens": 5,
            "ignore_eos": True, "priority": -1})
        urgent["seconds"] = time.monotonic() - start

    with http.stream("POST", "/v1/completions", json=background) as response:
        lines = (line for line in response.iter_lines() if line)
        json.loads(next(lines).removeprefix("data: "))  # the background request runs
        worker = threading.Thread(target=post_urgent)
        worker.start()
        worker.join(30)
        received = sum(1 for _ in zip(range(5), lines))  # the background one goes on
        # leaving the block closes the stream: the background request is aborted
    assert urgent["response"].status_code == 200, urgent["response"].text
    assert urgent["response"].json()["usage"]["completion_tokens"] == 5
    assert received == 5
    assert metrics(http)["pagedllm:num_preemptions_total"] > preempted_before


def test_secrets_never_reach_the_log(server, http):
    wrong = "sk-wrong-key-fedcba9876543210"
    # a client putting its key in the query string: uvicorn's access line logs the path
    assert http.get(f"/v1/models?api_key={API_KEY}").status_code == 200
    for header in ({"Authorization": f"Bearer {wrong}"}, {"x-api-key": wrong}):
        assert httpx.get(f"{server.url}/v1/models", headers=header).status_code == 401
    time.sleep(0.2)  # the access lines are written after the responses
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    startup = next(e["message"] for e in lines if "serve, args:" in e["message"])
    assert "'--api-key', '***'" in startup
    assert any("/v1/models?api_key=***" in e["message"] for e in lines), log[-2000:]
    assert API_KEY not in log and wrong not in log


def test_slow_reader_gets_merged_deltas_and_does_not_hold_the_engine(server, http):
    """A client that does not read its stream: the socket buffers fill, the SSE generator waits,
    and the engine finishes anyway while the request's pending output absorbs the deltas (one
    merged output, not one queued per step). Read at last, nothing is missing."""
    num_tokens = 4000  # ~1.2 MB of events: more than the socket buffers hold (~0.4 MB seen)
    body = json.dumps({"model": MODEL, "prompt": "once upon a time", "max_tokens": num_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True, "logprobs": 0})
    finished = "pagedllm:request_success_total{finished_reason=length}"
    before = metrics(http)[finished]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills fast
        sock.connect(("127.0.0.1", server.port))
        sock.sendall((f"POST /v1/completions HTTP/1.0\r\nHost: test\r\n"
                      f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        deadline = time.monotonic() + 60
        while metrics(http)[finished] == before:  # the engine finishes with nothing read
            assert time.monotonic() < deadline, "the engine waited for the slow reader"
            time.sleep(0.1)
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    raw = b"".join(chunks).decode()
    assert raw.startswith("HTTP/1.1 200"), raw[:300]
    events = [line.removeprefix("data: ") for line in raw.split("\r\n\r\n", 1)[1].split("\n")
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    per_event = [len(c["logprobs"]["tokens"]) for c in choices]
    assert sum(per_event) == num_tokens  # none lost
    assert choices[-1]["finish_reason"] == "length"
    # one decode step makes one token: an event of several is deltas merged while the reader was
    # away (a queue per request would have held one output per step instead: every event 1).
    # How many merge depends on how far the engine outruns the stalled reader on this CPU.
    assert max(per_event) > 1, per_event[-5:]
