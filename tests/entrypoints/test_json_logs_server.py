"""`pagedllm serve --log-format json`: every log line (API process, uvicorn, engine core) is one
JSON object, and lines written while serving a request carry its X-Request-Id."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.entrypoints.conftest import start_server


@pytest.fixture(scope="module")
def json_log(tiny_llama_dir, tmp_path_factory) -> list[dict]:
    log_path = tmp_path_factory.mktemp("json_logs") / "server.log"
    server = start_server(tiny_llama_dir, str(log_path), "--log-format", "json", "--access-log",
                          "--kv-cache-memory", "16MiB")
    try:
        httpx.get(f"{server.url}/v1/models", headers={"X-Request-Id": "req-models-1"})
        httpx.post(f"{server.url}/v1/completions", headers={"X-Request-Id": "req-complete-2"},
                   json={"model": tiny_llama_dir, "prompt": "Hi", "max_tokens": 3}, timeout=60)
        httpx.get(f"{server.url}/health")  # no X-Request-Id: the server makes one up
    finally:
        server.stop()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json
    return [json.loads(line) for line in lines]


def test_every_line_is_a_json_record(json_log):
    assert len(json_log) > 3
    for record in json_log:
        assert {"time", "level", "logger", "message", "process"} <= record.keys(), record
    # the engine core's own process logs as JSON too (it inherits PAGEDLLM_LOG_FORMAT)
    assert len({record["process"] for record in json_log}) >= 2


def test_request_lines_carry_the_request_id(json_log):
    by_id: dict[str, list[str]] = {}
    for record in json_log:
        if "request_id" in record:
            by_id.setdefault(record["request_id"], []).append(record["message"])
    assert any("GET /v1/models" in m for m in by_id["req-models-1"]), by_id
    assert any("POST /v1/completions" in m for m in by_id["req-complete-2"]), by_id
    made_up = [rid for rid, messages in by_id.items() if any("/health" in m for m in messages)]
    assert made_up and all(len(rid) == 32 for rid in made_up)  # uuid4().hex
    # start-up lines are outside any request
    assert any("request_id" not in r and "starting the API server" in r["message"]
               for r in json_log)
