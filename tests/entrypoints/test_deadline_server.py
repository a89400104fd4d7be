"""--request-timeout through a real `pagedllm serve`: requests past their deadline (queued behind
max_num_seqs 1, or mid-generation) answer what they have with finish_reason "length", are aborted
in the engine (KV freed), and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.entrypoints.conftest import serve_module
from tests.entrypoints.test_openai_server import metrics, wait_for_idle_kv

MODEL = "tiny"
TIMEOUT_S = 0.5
MAX_TOKENS = 8000
"""The tiny model makes ~500 tokens in 0.1 s on a fast CPU: 8000 of them outlast the deadline
on any machine (a long context for it below)."""


@pytest.fixture(scope="module")
def server(tiny_llama_factory, tmp_path_factory):
    model = tiny_llama_factory(max_position_embeddings=MAX_TOKENS + 512)
    yield from serve_module(model, tmp_path_factory, "deadline",
                            "--served-model-name", MODEL, "--kv-cache-memory", "16MiB",
                            "--max-num-seqs", "1", "--request-timeout", str(TIMEOUT_S))


def _body(stream: bool, max_tokens: int = MAX_TOKENS) -> dict:
    return {"model": MODEL, "prompt": "once upon a time", "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream}


async def _whole(client: httpx.AsyncClient) -> tuple[str, str, int, float]:
    start = time.monotonic()
    response = await client.post("/v1/completions", json=_body(False))
    assert response.status_code == 200, response.text
    data = response.json()
    choice = data["choices"][0]
    return (choice["text"], choice["finish_reason"], data["usage"]["completion_tokens"],
            time.monotonic() - start)


async def _streamed(client: httpx.AsyncClient) -> tuple[str, str, int, float]:
    start = time.monotonic()
    text, reason, chunks = "", None, 0
    async with client.stream("POST", "/v1/completions", json=_body(True)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            reason = choice["finish_reason"] or reason
            chunks += 1
    return text, reason, chunks, time.monotonic() - start


async def _burst(url: str) -> list[tuple[str, str, int, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*[_whole(client) for _ in range(7)], _streamed(client))


def test_requests_past_their_deadline_are_cut_short_and_freed(server):
    http = httpx.Client(base_url=server.url, timeout=60)
    before = metrics(http)
    results = asyncio.run(_burst(server.url))
    longest = max((text for text, *_ in results), key=len)
    for text, reason, _, elapsed in results:
        assert reason == "length"
        assert elapsed < TIMEOUT_S + 2.0  # answered at the deadline, not after the queue drained
        assert longest.startswith(text)  # what it has is the greedy text so far
    # one engine seat, eight requests of 8000 tokens: most ran out of time (usage says how far
    # each got; the streamed one has no usage and is left out of the count)
    cut = sum(count < MAX_TOKENS for _, _, count, _ in results[:-1])
    assert cut >= 3
    after = wait_for_idle_kv(http)
    assert after["pagedllm:kv_cache_usage_perc"] == 0
    assert after["pagedllm:num_requests_running"] == 0
    aborted = "pagedllm:request_success_total{finished_reason=abort}"
    assert after[aborted] - before[aborted] >= cut
    # the engine keeps serving
    response = http.post("/v1/completions", json=_body(False, max_tokens=8)).json()
    assert response["usage"]["completion_tokens"] == 8
    assert longest.startswith(response["choices"][0]["text"])


def test_request_chat_template_needs_the_flag(server):
    """Without --trust-request-chat-template a request's template is refused (vLLM's rule)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "chat_template": "{{ messages[0].content }}"}
    for path in ("/v1/chat/completions", "/tokenize"):
        response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("chat_template", "untrusted_chat_template")
    del body["chat_template"]
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
