"""Admission control through a real `pagedllm serve`: one running request (max_num_seqs 1), two
queued, the rest 503 with Retry-After while the admitted ones finish as they would alone."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.entrypoints.conftest import serve_module

MODEL = "tiny"
PROMPT = "the quick brown fox"


LONG_CONTEXT = 16384
"""The tiny model makes ~500 tokens in 0.1 s on a fast CPU: the running request needs a long
context to outlast the burst on any machine."""


@pytest.fixture(scope="module")
def server(tiny_llama_factory, tmp_path_factory):
    model = tiny_llama_factory(max_position_embeddings=LONG_CONTEXT)
    yield from serve_module(model, tmp_path_factory, "admission",
                            "--served-model-name", MODEL, "--kv-cache-memory", "16MiB",
                            "--max-num-seqs", "1", "--max-num-queued-requests", "2")


def _body(max_tokens: int, stream: bool) -> dict:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}


async def _read_stream(lines) -> tuple[str, str]:
    """(text, finish_reason) of an SSE completion stream (its line iterator)."""
    text, reason = "", None
    async for line in lines:
        if line == "data: [DONE]":
            break
        if not line.startswith("data: "):
            continue
        choice = json.loads(line[6:])["choices"][0]
        text += choice["text"]
        reason = choice["finish_reason"] or reason
    return text, reason


async def _first_data_line(lines) -> str:
    async for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("stream ended without data")


async def _scenario(url: str) -> dict:
    long_tokens = LONG_CONTEXT - 64  # the running request must outlast the burst below
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        running_cm = client.stream("POST", "/v1/completions", json=_body(long_tokens, True))
        running = await running_cm.__aenter__()
        assert running.status_code == 200
        running_lines = running.aiter_lines()
        # it runs: the engine's only seat is taken
        await _first_data_line(running_lines)
        queued = []
        for _ in range(2):
            cm = client.stream("POST", "/v1/completions", json=_body(8, True))
            response = await cm.__aenter__()
            queued.append((cm, response))
        rejected = await asyncio.gather(*[
            client.post("/v1/completions", json=_body(8, stream)) for stream in (True, False)])
        chat_rejected = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        results = {"queued_status": [r.status_code for _, r in queued],
                   "rejected": rejected, "chat_rejected": chat_rejected}
        # the burst is over: the running request leaves (a disconnect aborts it), the queue moves
        await running_cm.__aexit__(None, None, None)
        results["queued"] = []
        for cm, response in queued:
            results["queued"].append(await _read_stream(response.aiter_lines()))
            await cm.__aexit__(None, None, None)
        results["after"] = await asyncio.gather(*[
            client.post("/v1/completions", json=_body(8, False)) for _ in range(2)])
    return results


def test_queue_overflow_gets_503_and_admitted_requests_finish(server):
    results = asyncio.run(_scenario(server.url))
    assert results["queued_status"] == [200, 200]
    for response in [*results["rejected"], results["chat_rejected"]]:
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "queue_full" and error["type"] == "server_error"
        assert "queue is full" in error["message"]
    reference = httpx.post(f"{server.url}/v1/completions", json=_body(8, False),
                           timeout=60).json()["choices"][0]["text"]
    assert results["queued"] == [(reference, "length")] * 2
    for response in results["after"]:  # the queue drained: new requests are admitted again
        assert response.status_code == 200
        assert response.json()["choices"][0]["text"] == reference
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'pagedllm:num_requests_waiting{model_name="tiny"} 0.0' in metrics
