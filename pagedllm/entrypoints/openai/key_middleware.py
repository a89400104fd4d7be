"""ASGI middleware for `--api-keys-file`: who is calling (401 otherwise), may they use the model
(404, as OpenAI answers for a model a key cannot see), are they within their limits (429 with
Retry-After and OpenAI's x-ratelimit-* headers), and per-key Prometheus counters.

Only POSTs (the requests that run the model) count against a key's rates and concurrency; GETs
(/v1/models...) need a valid key and nothing else. The request's token meter is set in a context
variable for the serving layer to charge usage to (see rate_limit.py).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedllm.engine.tenant import Tenant, current_tenant
from pagedllm.entrypoints.openai.api_keys import ApiKeyIdentity, ApiKeyStore
from pagedllm.entrypoints.openai.errors import dialect_error_body
from pagedllm.entrypoints.openai.middleware import PROTECTED_PREFIXES
from pagedllm.entrypoints.openai.rate_limit import Clock, KeyLimiter, current_token_meter

_REJECTIONS = ("requests", "tokens", "concurrency", "model")


class KeyMetrics:
    def __init__(self, registry: CollectorRegistry, names: list[str]) -> None:
        self.requests = Counter("pagedllm:api_key_requests", "Requests admitted, per API key.",
                                ["key_name"], registry=registry)
        self.rejections = Counter("pagedllm:api_key_rejections",
                                  "Requests refused (rate, concurrency or model), per API key.",
                                  ["key_name", "reason"], registry=registry)
        self.tokens = Counter("pagedllm:api_key_tokens",
                              "Prompt + completion tokens charged, per API key.",
                              ["key_name"], registry=registry)
        self.unknown = Counter("pagedllm:api_key_unauthorized",
                               "Requests with a missing or unknown API key.", registry=registry)
        for name in names:  # export zeros so each key's series exist from the start
            self.requests.labels(key_name=name)
            self.tokens.labels(key_name=name)
            for reason in _REJECTIONS:
                self.rejections.labels(key_name=name, reason=reason)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, store: ApiKeyStore, default_model: str,
                 registry: CollectorRegistry, max_body_bytes: int,
                 clock: Clock | None = None) -> None:
        self.app = app
        self.store = store
        self.default_model = default_model
        self.max_body_bytes = max_body_bytes
        self.metrics = KeyMetrics(registry, [i.name for i in store.identities()])
        extra = {} if clock is None else {"clock": clock}
        self.limiters = {
            i.name: KeyLimiter(i.requests_per_minute, i.tokens_per_minute, i.max_concurrent,
                               **extra)
            for i in store.identities()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not scope["path"].startswith(
                PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        identity = self.store.lookup(_given_key(Headers(scope=scope)))
        if identity is None:
            self.metrics.unknown.inc()
            await _error(scope, receive, send, HTTPStatus.UNAUTHORIZED,
                         "Incorrect or missing API key.", "invalid_request_error",
                         "invalid_api_key", {"WWW-Authenticate": "Bearer"})
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        receive = await self._check_model(identity, scope, receive, send)
        if receive is None:
            return
        await self._limited(identity, scope, receive, send)

    async def _check_model(self, identity: ApiKeyIdentity, scope: Scope, receive: Receive,
                           send: Send) -> Receive | None:
        """The body's `model` against the key's allowed models (the body is read here and
        replayed to the app); None once a 404 went out."""
        if identity.allowed_models is None:
            return receive
        messages, body = await _read_body(receive, self.max_body_bytes)
        model = _model_of(body, self.default_model)
        if model is not None and not identity.may_use(model):
            self.metrics.rejections.labels(key_name=identity.name, reason="model").inc()
            await _error(scope, receive, send, HTTPStatus.NOT_FOUND,
                         f"The model `{model}` does not exist or you do not have access to it.",
                         "invalid_request_error", "model_not_found")
            return None
        return _replay(messages, receive)

    async def _limited(self, identity: ApiKeyIdentity, scope: Scope, receive: Receive,
                       send: Send) -> None:
        limiter = self.limiters[identity.name]
        decision = limiter.acquire()
        if not decision.allowed:
            self.metrics.rejections.labels(key_name=identity.name,
                                           reason=decision.reason).inc()
            headers = {**decision.headers, "Retry-After": str(decision.retry_after_s)}
            await _error(scope, receive, send, HTTPStatus.TOO_MANY_REQUESTS,
                         _limit_message(identity, decision.reason), "rate_limit_exceeded",
                         "rate_limit_exceeded", headers)
            return
        self.metrics.requests.labels(key_name=identity.name).inc()

        def meter(num_tokens: int) -> None:
            limiter.charge_tokens(num_tokens)
            self.metrics.tokens.labels(key_name=identity.name).inc(num_tokens)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in limiter.headers().items():
                    headers[name] = value
            await send(message)

        token = current_token_meter.set(meter)
        tenant = current_tenant.set(Tenant(identity.name, identity.fair_share))
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            current_tenant.reset(tenant)
            current_token_meter.reset(token)
            limiter.release()


def _given_key(headers: Headers) -> str:
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:]
    return headers.get("x-api-key", "")


def _limit_message(identity: ApiKeyIdentity, reason: str | None) -> str:
    what = {"requests": f"{identity.requests_per_minute} requests per minute",
            "tokens": f"{identity.tokens_per_minute} tokens per minute",
            "concurrency": f"{identity.max_concurrent} concurrent requests"}.get(reason or "", "")
    return f"Rate limit reached for key {identity.name!r}: {what}. Retry after the time in " \
           "the Retry-After header."


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes]:
    """The body's messages (up to `limit` bytes: past it the app's own 413 applies)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or size > limit:
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    return messages, body


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def _model_of(body: bytes, default_model: str) -> str | None:
    """The `model` a JSON body asks for (the default model when left out); None when the body is
    not a JSON object (the route answers 400 for it)."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    if model is None:
        return default_model
    return model if isinstance(model, str) else None


async def _error(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 type_: str, code: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse(dialect_error_body(scope["path"], status, message, type_, code=code),
                            status_code=status, headers=headers)
    await response(scope, receive, send)
