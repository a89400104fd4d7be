"""The Ollama routes (`/api/*`): parse, delegate to OllamaServing, answer JSON or NDJSON. Errors
on these paths are Ollama's {"error": "..."} (registered with the app's error handlers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedllm.entrypoints.ollama.protocol import (
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    ollama_error_body,
)
from pagedllm.entrypoints.openai.errors import register_error_dialect
from pagedllm.entrypoints.openai.utils import with_cancellation
from pagedllm.version import __version__

router = APIRouter()
register_error_dialect("/api/", ollama_error_body)


def _serving(raw_request: Request):  # noqa: ANN202 - OllamaServing, imported late
    state = raw_request.app.state.server
    state.require_ready()
    return state.ollama


def _respond(result: Any) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="application/x-ndjson")


@router.get("/api/version")
async def version() -> Response:
    # Answers while the model loads too: clients probe it to find the server.
    return JSONResponse({"version": __version__})


@router.get("/api/tags")
async def tags(raw_request: Request) -> Response:
    return JSONResponse(_serving(raw_request).tags())


@router.get("/api/ps")
async def ps(raw_request: Request) -> Response:
    return JSONResponse(_serving(raw_request).ps())


@router.post("/api/show")
async def show(request: OllamaShowRequest, raw_request: Request) -> Response:
    return JSONResponse(_serving(raw_request).show(request))


@router.post("/api/chat")
@with_cancellation
async def chat(request: OllamaChatRequest, raw_request: Request) -> Response:
    return _respond(await _serving(raw_request).chat_request(request))


@router.post("/api/generate")
@with_cancellation
async def generate(request: OllamaGenerateRequest, raw_request: Request) -> Response:
    return _respond(await _serving(raw_request).generate(request))


@router.post("/api/embed")
@with_cancellation
async def embed(request: OllamaEmbedRequest, raw_request: Request) -> Response:
    return JSONResponse(await _serving(raw_request).embed(request))
