"""Malformed requests to every dialect (Responses, Anthropic, Ollama) through a real `pagedllm
serve` (tiny random Llama): each field of each endpoint set to each of a list of wrong values is
answered 2xx or a 4xx in that dialect's error shape, never a 5xx (nor FastAPI's 422), and the
engine keeps serving afterwards."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)

USER = [{"role": "user", "content": "hi"}]
WRONG = [
    None, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}, [{}], [{"type": "x"}], True, 10**12, [[1]],
    [{"role": "user"}], [{"role": "user", "content": None}], [{"role": "user", "content": [{}]}],
    [{"type": "function"}], [{"type": "function", "name": 3}], {"type": "function"},
    {"format": {}}, {"format": {"type": "json_schema", "schema": 5}}, "auto", {"type": "tool"},
    [{"name": "f"}], [{"name": "f", "input_schema": 3}], [{"type": "function", "function": {}}],
    [{"role": "assistant", "tool_calls": [{}]}], [{"role": "tool", "content": "x"}],
    [{"type": "function_call"}], [{"type": "function_call_output", "call_id": "a"}],
    [{"role": "user", "content": [{"type": "tool_result"}]}],
    [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}],
    {"num_predict": -5}, {"stop": 5}, {"top_k": "a"}, {"seed": "x"}, {"num_predict": 1.5},
    {"type": "json_schema", "properties": 3},
]
ENDPOINTS = {
    "/v1/responses": ({"model": "tiny", "input": "hi", "max_output_tokens": 4}, [
        "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
        "temperature", "top_p", "previous_response_id", "store", "reasoning", "metadata",
        "stream"]),
    "/v1/messages": ({"model": "tiny", "max_tokens": 4, "messages": USER}, [
        "messages", "system", "tools", "tool_choice", "max_tokens", "stop_sequences",
        "temperature", "top_k", "top_p", "stream", "thinking"]),
    "/v1/messages/count_tokens": ({"model": "tiny", "messages": USER}, [
        "messages", "system", "tools", "tool_choice"]),
    "/api/chat": ({"model": "tiny", "messages": USER, "stream": False,
                   "options": {"num_predict": 4}}, [
        "messages", "tools", "format", "options", "think", "stream"]),
    "/api/generate": ({"model": "tiny", "prompt": "hi", "stream": False,
                       "options": {"num_predict": 4}}, [
        "prompt", "system", "context", "format", "options", "raw", "think", "suffix"]),
    "/api/embed": ({"model": "tiny", "input": "hi"}, ["input", "dimensions", "truncate"]),
    "/api/show": ({"model": "tiny"}, ["model", "name"]),
}


@pytest.fixture(scope="module")
def server(shared_tiny_server):
    return shared_tiny_server


def in_dialect_shape(path: str, body: dict) -> bool:
    if path.startswith("/api/"):
        return set(body) == {"error"} and isinstance(body["error"], str)
    if path.startswith("/v1/messages"):
        return body.get("type") == "error" and set(body["error"]) == {"type", "message"}
    return set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_wrong_values_are_4xx_in_the_dialect_shape(server, path):
    base, fields = ENDPOINTS[path]
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for field, value in itertools.product(fields, WRONG):
            response = http.post(path, json={**base, field: value})
            status = response.status_code
            if status >= 500 or status == 422:
                failures.append(f"{status} {field}={json.dumps(value)}: {response.text[:200]}")
            elif status >= 400 and not in_dialect_shape(path, response.json()):
                failures.append(f"shape {field}={json.dumps(value)}: {response.text[:200]}")
        assert not failures, "\n".join(failures)
        assert http.post(path, json=base).status_code in (200, 400)  # /api/embed: not an embedder
        assert http.post("/v1/responses", json=ENDPOINTS["/v1/responses"][0]).status_code == 200
