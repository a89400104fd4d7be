"""The Anthropic routes: parse, delegate to AnthropicServingMessages, format. Errors on these
paths are rendered in Anthropic's shape (registered with the app's error handlers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedllm.entrypoints.anthropic.protocol import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    anthropic_error_body,
)
from pagedllm.entrypoints.openai.errors import register_error_dialect
from pagedllm.entrypoints.openai.utils import with_cancellation

router = APIRouter()
register_error_dialect("/v1/messages", anthropic_error_body)


def _serving(raw_request: Request):  # noqa: ANN202 - AnthropicServingMessages, imported late
    state = raw_request.app.state.server
    state.require_ready()
    return state.anthropic


@router.post("/v1/messages")
@with_cancellation
async def create_message(request: AnthropicMessagesRequest, raw_request: Request) -> Response:
    result = await _serving(raw_request).create_message(request)
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: AnthropicCountTokensRequest, raw_request: Request) -> Response:
    return JSONResponse(await _serving(raw_request).count_tokens(request))
