"""Per-key limits (rate_limit.py), the keys file (api_keys.py) and the key middleware, with a fake
clock; no model."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from pagedllm.entrypoints.openai.api_keys import ApiKeyIdentity, ApiKeyStore, load_api_keys
from pagedllm.entrypoints.openai.key_middleware import ApiKeyMiddleware
from pagedllm.entrypoints.openai.rate_limit import (
    KeyLimiter,
    TokenBucket,
    current_token_meter,
    format_duration,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_bursts_its_minute_then_refills_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(60, clock)  # one per second
    assert all(bucket.take(1) for _ in range(60))
    assert not bucket.take(1)
    assert bucket.seconds_until(1) == pytest.approx(1.0)
    clock.now += 2.5
    assert bucket.take(1) and bucket.take(1) and not bucket.take(1)
    clock.now += 1000
    assert bucket.level() == 60  # never above capacity


def test_requests_per_minute():
    clock = FakeClock()
    limiter = KeyLimiter(requests_per_minute=2, clock=clock)
    assert limiter.acquire().allowed and limiter.acquire().allowed
    refused = limiter.acquire()
    assert (refused.allowed, refused.reason, refused.retry_after_s) == (False, "requests", 30)
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 30
    assert limiter.acquire().allowed


def test_tokens_per_minute_charged_after_the_fact():
    clock = FakeClock()
    limiter = KeyLimiter(tokens_per_minute=100, clock=clock)
    assert limiter.acquire().allowed
    limiter.charge_tokens(130)  # usage known at the end: the bucket goes negative
    limiter.release()
    refused = limiter.acquire()
    assert refused.reason == "tokens"
    assert refused.retry_after_s == 19  # 31 tokens at 100/60 per second
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    clock.now += 19
    assert limiter.acquire().allowed


def test_max_concurrent_and_refusals_take_nothing():
    limiter = KeyLimiter(requests_per_minute=10, max_concurrent=1, clock=FakeClock())
    assert limiter.acquire().allowed
    assert limiter.acquire().reason == "concurrency"
    assert limiter.requests.level() == 9  # the refused request took no request unit
    limiter.release()
    assert limiter.acquire().allowed


def test_format_duration():
    assert format_duration(0.02) == "20ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"


def test_keys_file_json_and_yaml(tmp_path):
    digest = hashlib.sha256(b"sk-bob").hexdigest()
    data = {"sk-alice": {"name": "alice", "requests_per_minute": 5, "allowed_models": ["tiny"]},
            f"sha256:{digest}": {"name": "bob"}}
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    store = load_api_keys(str(path))
    assert store.lookup("sk-alice") == ApiKeyIdentity("alice", 5, None, None, ("tiny",))
    assert store.lookup("sk-bob").name == "bob"
    assert store.lookup("sk-alice ") is None and store.lookup("") is None
    yaml_path = tmp_path / "keys.yaml"
    yaml_path.write_text("sk-carol:\n  name: carol\n  max_concurrent: 2\n")
    assert load_api_keys(str(yaml_path)).lookup("sk-carol").max_concurrent == 2


@pytest.mark.parametrize("data, message", [
    ({"k": {"requests_per_minute": 1}}, "`name`"),
    ({"k": {"name": "a", "requests_per_minute": 0}}, "positive integer"),
    ({"k": {"name": "a", "rpm": 1}}, "unknown field"),
    ({"k": {"name": "a", "allowed_models": "tiny"}}, "list of model names"),
    ({"k": {"name": "a"}, "j": {"name": "a"}}, "two keys"),
    ({"sha256:zz": {"name": "a"}}, "64 hex digits"),
    ([], "non-empty object"),
])
def test_bad_keys_files_name_the_problem_not_the_key(tmp_path, data, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_api_keys(str(path))
    assert "sha256:zz" not in str(info.value) or message == "64 hex digits"


def _client(clock: FakeClock) -> tuple[TestClient, CollectorRegistry]:
    store = ApiKeyStore()
    store.add("sk-slow", ApiKeyIdentity("slow", requests_per_minute=2, tokens_per_minute=50))
    store.add("sk-fast", ApiKeyIdentity("fast", allowed_models=("tiny",)))
    app = FastAPI()

    @app.post("/v1/completions")
    async def complete(request: Request) -> dict:
        body = await request.json()
        meter = current_token_meter.get()
        meter(body.get("tokens", 0))
        return {"model": body.get("model")}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"data": []}

    registry = CollectorRegistry()
    app.add_middleware(ApiKeyMiddleware, store=store, default_model="tiny", registry=registry,
                       max_body_bytes=1 << 20, clock=clock)
    return TestClient(app), registry


def _post(client: TestClient, key: str, **body) -> object:
    return client.post("/v1/completions", json={"model": "tiny", **body},
                       headers={"Authorization": f"Bearer {key}"})


def test_middleware_two_keys_one_over_its_limit():
    clock = FakeClock()
    client, registry = _client(clock)
    assert client.post("/v1/completions", json={}).status_code == 401
    assert _post(client, "sk-nope").json()["error"]["code"] == "invalid_api_key"
    first = _post(client, "sk-slow", tokens=10)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "50"
    assert _post(client, "sk-slow", tokens=10).status_code == 200
    refused = _post(client, "sk-slow")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    for _ in range(5):  # the other key proceeds
        assert _post(client, "sk-fast").status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": "sk-slow"}).status_code == 200
    clock.now += 30
    assert _post(client, "sk-slow", tokens=100).status_code == 200  # charged 100 of 50
    tokens_refused = _post(client, "sk-slow")
    assert tokens_refused.status_code == 429
    assert "tokens per minute" in tokens_refused.json()["error"]["message"]
    metrics = generate_latest(registry).decode()
    assert 'pagedllm:api_key_requests_total{key_name="slow"} 3.0' in metrics
    assert 'pagedllm:api_key_requests_total{key_name="fast"} 5.0' in metrics
    assert 'pagedllm:api_key_rejections_total{key_name="slow",reason="requests"} 1.0' in metrics
    assert 'pagedllm:api_key_rejections_total{key_name="slow",reason="tokens"} 1.0' in metrics
    assert 'pagedllm:api_key_tokens_total{key_name="slow"} 120.0' in metrics
    assert "pagedllm:api_key_unauthorized_total 2.0" in metrics
    assert "sk-" not in metrics


def test_middleware_allowed_models():
    client, registry = _client(FakeClock())
    refused = _post(client, "sk-fast", model="other")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    ok = client.post("/v1/completions", json={"prompt": "x"},  # no model: the default one
                     headers={"Authorization": "Bearer sk-fast"})
    assert ok.status_code == 200 and ok.json() == {"model": None}
    assert _post(client, "sk-slow", model="other").status_code == 200  # no list: every model
    metrics = generate_latest(registry).decode()
    assert 'pagedllm:api_key_rejections_total{key_name="fast",reason="model"} 1.0' in metrics


def test_middleware_max_concurrent_holds_through_a_stream():
    """A streamed response keeps its seat until its last byte; the seat is then given back."""
    store = ApiKeyStore()
    store.add("sk-one", ApiKeyIdentity("one", max_concurrent=1))
    app = FastAPI()
    release = asyncio.Event()

    @app.post("/v1/completions")
    async def complete() -> StreamingResponse:
        async def body():
            yield "data: 1\n\n"
            await release.wait()
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app.add_middleware(ApiKeyMiddleware, store=store, default_model="tiny",
                       registry=CollectorRegistry(), max_body_bytes=1 << 20)
    headers = {"Authorization": "Bearer sk-one"}

    async def run() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/completions", json={}, headers=headers))
            await asyncio.sleep(0.05)  # the first stream is open, waiting for `release`
            second = await client.post("/v1/completions", json={}, headers=headers)
            release.set()
            done = await first
            third = await client.post("/v1/completions", json={}, headers=headers)
            return done.status_code, second.status_code, third.status_code

    assert asyncio.run(run()) == (200, 429, 200)


def test_middleware_names_the_tenant_for_the_fair_share(tmp_path):
    from pagedllm.engine.tenant import Tenant, current_tenant

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"sk-a": {"name": "a", "fair_share": 3}, "sk-b": {"name": "b"}}))
    store = load_api_keys(str(path))
    app = FastAPI()

    @app.post("/v1/completions")
    async def complete() -> dict:
        tenant = current_tenant.get()  # what AsyncLLM copies onto each engine-core request
        return {"tenant": None if tenant is None else [tenant.name, tenant.weight]}

    app.add_middleware(ApiKeyMiddleware, store=store, default_model="tiny",
                       registry=CollectorRegistry(), max_body_bytes=1 << 20)
    client = TestClient(app)
    assert _post(client, "sk-a").json() == {"tenant": ["a", 3]}
    assert _post(client, "sk-b").json() == {"tenant": ["b", 1]}
    assert current_tenant.get() is None and Tenant("b") == Tenant("b", 1)
    for bad in (0, 1.5, True, "2"):
        path.write_text(json.dumps({"sk-a": {"name": "a", "fair_share": bad}}))
        with pytest.raises(ValueError, match="fair_share must be an integer"):
            load_api_keys(str(path))
