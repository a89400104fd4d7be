"""The OpenAI-compatible HTTP server: app factory, lifespan (engine start/stop) and routes that only
parse, delegate to the serving_*.py objects and format (JSON or SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from pagedllm.entrypoints.anthropic.api_router import router as anthropic_router
from pagedllm.entrypoints.frontend.router import router as frontend_router
from pagedllm.entrypoints.ollama.api_router import router as ollama_router
from pagedllm.entrypoints.openai.errors import error_json, install_error_handlers
from pagedllm.entrypoints.openai.middleware import (
    AuthMiddleware,
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    TraceHeadersMiddleware,
)
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    LoadLoRAAdapterRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    UnloadLoRAAdapterRequest,
)
from pagedllm.entrypoints.openai.protocol_responses import ResponsesRequest
from pagedllm.entrypoints.openai.protocol_score import (
    ClassificationRequest,
    RerankRequest,
    ScoreRequest,
)
from pagedllm.entrypoints.openai.state import ServerSettings, ServerState
from pagedllm.entrypoints.openai.utils import with_cancellation
from pagedllm.version import __version__

router = APIRouter()
lora_router = APIRouter()
"""Runtime adapter loading, mounted only with --allow-runtime-lora-updating."""


def _state(raw_request: Request) -> ServerState:
    return raw_request.app.state.server


def _ready_state(raw_request: Request) -> ServerState:
    state = _state(raw_request)
    state.require_ready()
    return state


def _respond(result: Any) -> Response:
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump())
    if isinstance(result, dict):
        return JSONResponse(result)
    if result is None:  # the client disconnected; nobody reads this
        return Response(status_code=499)
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.get("/health", response_class=Response,
            responses={200: {"description": "The engine is serving (empty body, as vLLM).",
                             "content": None},
                       503: {"description": "Loading, failed, or the engine core is down."}})
async def health(raw_request: Request) -> Response:
    state = _state(raw_request)
    problem = state.health_problem()
    if problem is not None:
        return error_json(503, problem, code="model_not_ready" if not state.ready
                          else "engine_dead")
    return Response(status_code=200)


@router.get("/version")
async def version() -> dict:
    return {"version": __version__}


@router.get("/metrics")
async def metrics(raw_request: Request) -> Response:
    body, content_type = _state(raw_request).metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/models")
async def list_models(raw_request: Request) -> Response:
    return _respond(_ready_state(raw_request).models.show_available_models())  # type: ignore[union-attr]


@router.post("/v1/completions")
@with_cancellation
async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).completion
    return _respond(await serving.create_completion(request))  # type: ignore[union-attr]


@router.post("/v1/chat/completions")
@with_cancellation
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).chat
    return _respond(await serving.create_chat_completion(request))  # type: ignore[union-attr]


@router.post("/v1/embeddings")
@with_cancellation
async def create_embedding(request: EmbeddingRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).embedding
    return _respond(await serving.create_embedding(request))  # type: ignore[union-attr]


@router.post("/v1/responses")
@with_cancellation
async def create_response(request: ResponsesRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).responses
    return _respond(await serving.create_response(request))  # type: ignore[union-attr]


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).responses
    return _respond(serving.retrieve(response_id))  # type: ignore[union-attr]


@router.post("/score")
@router.post("/v1/score")
@with_cancellation
async def create_score(request: ScoreRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).score
    return _respond(await serving.score(request))  # type: ignore[union-attr]


@router.post("/rerank")
@router.post("/v1/rerank")
@router.post("/v2/rerank")
@with_cancellation
async def create_rerank(request: RerankRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).score
    return _respond(await serving.rerank(request))  # type: ignore[union-attr]


@router.post("/classify")
@router.post("/v1/classify")
@with_cancellation
async def create_classify(request: ClassificationRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).classification
    return _respond(await serving.create_classify(request))  # type: ignore[union-attr]


@router.post("/pooling")
@with_cancellation
async def create_pooling(request: EmbeddingRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).score
    return _respond(await serving.pooling(request))  # type: ignore[union-attr]


@router.post("/tokenize")
async def tokenize(request: TokenizeCompletionRequest | TokenizeChatRequest,
                   raw_request: Request) -> Response:
    serving = _ready_state(raw_request).tokenization
    return _respond(serving.create_tokenize(request))  # type: ignore[union-attr]


@router.get("/tokenizer_info")
async def tokenizer_info(raw_request: Request) -> Response:
    serving = _ready_state(raw_request).tokenization
    return JSONResponse(serving.tokenizer_info())  # type: ignore[union-attr]


@router.post("/detokenize")
async def detokenize(request: DetokenizeRequest, raw_request: Request) -> Response:
    serving = _ready_state(raw_request).tokenization
    return _respond(serving.create_detokenize(request))  # type: ignore[union-attr]


@lora_router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: LoadLoRAAdapterRequest, raw_request: Request) -> Response:
    models = _ready_state(raw_request).models
    models.add_lora(request.lora_name, request.lora_path)  # type: ignore[union-attr]
    return Response(f"Success: LoRA adapter '{request.lora_name}' added successfully.")


@lora_router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: UnloadLoRAAdapterRequest, raw_request: Request
                              ) -> Response:
    state = _ready_state(raw_request)
    lora = state.models.remove_lora(request.lora_name)  # type: ignore[union-attr]
    # the engine frees the adapter's CPU copy and slot (once no request uses it)
    await state.engine.remove_lora(lora.lora_int_id)  # type: ignore[union-attr]
    return Response(f"Success: LoRA adapter '{request.lora_name}' removed successfully.")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.server
    state.start_loading()
    try:
        yield
    finally:
        await state.shutdown()


def build_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app; the engine starts loading when the app starts (lifespan)."""
    app = FastAPI(title="pagedllm OpenAI-compatible server", version=__version__,
                  lifespan=lifespan)
    app.state.server = ServerState(settings)
    app.include_router(router)
    app.include_router(anthropic_router)
    app.include_router(ollama_router)
    if not settings.disable_frontend:
        app.include_router(frontend_router)
    if settings.allow_runtime_lora_updating:
        app.include_router(lora_router)
    install_error_handlers(app)
    # Added innermost first: CORS is outermost so even errors carry its headers.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.api_keys is not None:
        _add_key_middleware(app, settings)
    elif settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    app.add_middleware(RequestIdMiddleware)
    if settings.otlp_traces_endpoint:
        app.add_middleware(TraceHeadersMiddleware)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                           allow_credentials=True, allow_methods=["*"], allow_headers=["*"])
    return app


def _add_key_middleware(app: FastAPI, settings: ServerSettings) -> None:
    """--api-keys-file (with --api-key beside it as an identity without limits)."""
    from pagedllm.entrypoints.openai.api_keys import ApiKeyIdentity
    from pagedllm.entrypoints.openai.key_middleware import ApiKeyMiddleware

    store = settings.api_keys
    assert store is not None
    if settings.api_key and store.lookup(settings.api_key) is None:
        store.add(settings.api_key, ApiKeyIdentity("api-key"))
    app.add_middleware(ApiKeyMiddleware, store=store,
                       default_model=settings.served_model_names[0],
                       registry=app.state.server.metrics.registry,
                       max_body_bytes=settings.max_request_body_bytes)
