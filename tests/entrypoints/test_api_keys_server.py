"""--api-keys-file through a real `pagedllm serve` and the official openai client: two keys with
different limits, the one over its limit gets 429 (Retry-After, x-ratelimit-*) while the other
proceeds; a model a key may not use is a 404; per-key counters in /metrics."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from tests.entrypoints.conftest import serve_module

MODEL = "tiny"
PLAIN_KEY = "plain-key-1"


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps({
        "sk-limited": {"name": "limited", "requests_per_minute": 2, "tokens_per_minute": 10000},
        "sk-free": {"name": "free", "allowed_models": [MODEL]},
    }))
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "api_keys",
                            "--served-model-name", MODEL, "other", "--kv-cache-memory", "16MiB",
                            "--api-keys-file", str(keys), "--api-key", PLAIN_KEY)


def _client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def _complete(client: openai.OpenAI, model: str = MODEL):
    return client.completions.with_raw_response.create(model=model, prompt="hello there",
                                                       max_tokens=5, temperature=0)


def test_two_keys_one_rate_limited_the_other_proceeds(server):
    limited, free = _client(server, "sk-limited"), _client(server, "sk-free")
    usage = 0
    for remaining in ("1", "0"):
        raw = _complete(limited)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        usage += raw.parse().usage.total_tokens
    with pytest.raises(openai.RateLimitError) as info:
        _complete(limited)
    response = info.value.response
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms", response.headers["x-ratelimit-reset-requests"])
    assert info.value.code == "rate_limit_exceeded"
    for _ in range(4):  # the other key is not held back
        assert _complete(free).parse().choices[0].finish_reason in ("length", "stop")
    chat = free.chat.completions.create(model=MODEL, max_tokens=3,
                                        messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content is not None
    # --api-key keeps working beside the file, without limits
    for _ in range(3):
        _complete(_client(server, PLAIN_KEY))
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'pagedllm:api_key_requests_total{key_name="limited"} 2.0' in metrics
    assert 'pagedllm:api_key_requests_total{key_name="free"} 5.0' in metrics
    assert ('pagedllm:api_key_rejections_total{key_name="limited",reason="requests"} 1.0'
            in metrics)
    assert f'pagedllm:api_key_tokens_total{{key_name="limited"}} {float(usage)}' in metrics
    assert "sk-limited" not in metrics and "sk-free" not in metrics


def test_unknown_key_and_forbidden_model(server):
    with pytest.raises(openai.AuthenticationError):
        _complete(_client(server, "sk-wrong"))
    with pytest.raises(openai.NotFoundError) as info:
        _complete(_client(server, "sk-free"), model="other")
    assert info.value.code == "model_not_found"
    # the plain key and the limited one (no model list) may use every served name
    assert _complete(_client(server, PLAIN_KEY), model="other").parse().model == "other"
    assert httpx.get(f"{server.url}/v1/models",
                     headers={"Authorization": "Bearer sk-free"}).status_code == 200
