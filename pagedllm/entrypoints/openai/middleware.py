"""Pure ASGI middleware (no BaseHTTPMiddleware: it would break streaming and disconnect
detection): API key, request id header, request body size limit."""

from __future__ import annotations

import secrets
import uuid
from http import HTTPStatus

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedllm.entrypoints.openai.errors import dialect_error_body
from pagedllm.log_format import REQUEST_ID

PROTECTED_PREFIXES = ("/v1", "/v2", "/tokenize", "/detokenize", "/tokenizer_info", "/api/",
                      "/score", "/rerank", "/pooling")
"""Paths that need the API key; /health, /version and /metrics stay open (as in vLLM)."""


class AuthMiddleware:
    """Requires `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`), compared in
    constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.expected_x_api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not scope["path"].startswith(
                PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("authorization", "").encode()
        given_x_api_key = headers.get("x-api-key", "").encode()
        # Both compared, always, so the time taken does not say which header was tried.
        bearer_ok = secrets.compare_digest(given, self.expected)
        x_api_key_ok = (secrets.compare_digest(given_x_api_key, self.expected_x_api_key)
                        and bool(given_x_api_key))
        if not (bearer_ok or x_api_key_ok):
            response = JSONResponse(
                dialect_error_body(scope["path"], HTTPStatus.UNAUTHORIZED,
                                   "Incorrect or missing API key.", "invalid_request_error",
                                   code="invalid_api_key"),
                status_code=HTTPStatus.UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Echoes the client's X-Request-Id (or a new one) on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get("x-request-id") or uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        # Logs written while this request is served carry its id (--log-format json).
        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class BodySizeLimitMiddleware:
    """413 for a body over the limit, by Content-Length or while a chunked body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body reading: the error handlers
                    # render it as a 413 OpenAI error.
                    raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            dialect_error_body(scope["path"], HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               self._message(), code="request_too_large"),
            status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class TraceHeadersMiddleware:
    """--otlp-traces-endpoint: the request's W3C trace context (traceparent, tracestate) for
    AsyncLLM, so its span joins the caller's trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from pagedllm.metrics.tracing import TRACE_HEADERS, trace_headers_from

        token = TRACE_HEADERS.set(trace_headers_from(Headers(scope=scope)))
        try:
            await self.app(scope, receive, send)
        finally:
            TRACE_HEADERS.reset(token)
