"""The server's state: loads the engine in the background (so /health can answer 503 meanwhile),
holds the serving objects once ready, and stops the engine on shutdown."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pagedllm.entrypoints.openai.admission import AdmissionControl, AdmissionLimits
from pagedllm.entrypoints.openai.engine_supervisor import EngineSupervisor, RestartPolicy
from pagedllm.entrypoints.openai.errors import OpenAIError, ServiceUnavailableError
from pagedllm.entrypoints.openai.serving_models import LoRAModulePath, OpenAIServingModels
from pagedllm.logger import init_logger
from pagedllm.metrics.loggers import LoggingStatLogger
from pagedllm.metrics.prometheus import PrometheusStatLogger
from pagedllm.utils.memory import format_bytes

if TYPE_CHECKING:
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.async_llm import AsyncLLM
    from pagedllm.engine.core_client import MPClient
    from pagedllm.engine.dp_client import DPLBClient
    from pagedllm.entrypoints.anthropic.serving_messages import AnthropicServingMessages
    from pagedllm.entrypoints.ollama.serving import OllamaServing
    from pagedllm.entrypoints.openai.api_keys import ApiKeyStore
    from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
    from pagedllm.entrypoints.openai.serving_classification import OpenAIServingClassification
    from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
    from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
    from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
    from pagedllm.entrypoints.openai.serving_score import OpenAIServingScore
    from pagedllm.entrypoints.openai.serving_tokenize import OpenAIServingTokenization

logger = init_logger(__name__)


@dataclass
class ServerSettings:
    """What the app needs from the command line (see cli/serve.py for the flags)."""

    engine_args: EngineArgs
    served_model_names: list[str]
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    chat_template: str | None = None
    """The template's text (read from --chat-template FILE)."""
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = False
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    max_request_body_bytes: int = 16 * 1024 * 1024
    disable_frontend: bool = False
    """--disable-frontend: no web chat page at `/`."""
    engine_startup_timeout: float | None = None
    enable_responses_api_store: bool = False
    """--enable-responses-api-store: keep responses for previous_response_id / GET."""
    responses_api_store_max_size: int = 1000
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    """--max-num-queued-requests / --max-num-queued-tokens (503 when the queue is full)."""
    api_keys: ApiKeyStore | None = None
    """--api-keys-file: keys with identities and limits."""
    request_timeout: float | None = None
    """--request-timeout: seconds before a generation is cut short (finish_reason "length")."""
    trust_request_chat_template: bool = False
    """--trust-request-chat-template: run a request's own chat_template (400 otherwise)."""
    lora_modules: list[LoRAModulePath] = field(default_factory=list)
    """Adapters served from the start (--lora-modules; needs --enable-lora)."""
    allow_runtime_lora_updating: bool = False
    """Expose POST /v1/load_lora_adapter and /v1/unload_lora_adapter."""
    lora_dir: str | None = None
    """Runtime loads may only read adapters under this directory (None: anywhere)."""
    otlp_traces_endpoint: str | None = None
    """--otlp-traces-endpoint: one OpenTelemetry span per finished request."""
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    """--restart-engine-on-failure / --max-engine-restarts (engine_supervisor.py)."""


class ServerState:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.metrics = PrometheusStatLogger(settings.served_model_names[0],
                                            settings.engine_args.data_parallel_size)
        self.engine: AsyncLLM | None = None
        self.models: OpenAIServingModels | None = None
        self.completion: OpenAIServingCompletion | None = None
        self.chat: OpenAIServingChat | None = None
        self.tokenization: OpenAIServingTokenization | None = None
        self.embedding: OpenAIServingEmbedding | None = None
        self.responses: OpenAIServingResponses | None = None
        self.anthropic: AnthropicServingMessages | None = None
        self.ollama: OllamaServing | None = None
        self.score: OpenAIServingScore | None = None
        self.classification: OpenAIServingClassification | None = None
        self.load_error: str | None = None
        self.admission: AdmissionControl | None = None
        self.on_fatal: Callable[[str], None] | None = None
        """Set by the launcher: stop the HTTP server (the engine could not start)."""
        self.supervisor: EngineSupervisor | None = None
        self._client: MPClient | DPLBClient | None = None
        self._load_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def require_ready(self) -> None:
        if self.engine is None:
            message = (f"the engine failed to start: {self.load_error}" if self.load_error
                       else "the model is still loading; retry shortly")
            raise ServiceUnavailableError(message, code="model_not_ready")
        problem = self.health_problem()
        if problem is not None:
            raise ServiceUnavailableError(problem, code="engine_dead")

    def health_problem(self) -> str | None:
        """Why the server cannot serve now (None: it can): loading, failed, or a dead core."""
        if self.engine is None:
            return self.load_error or "the model is still loading"
        if self.supervisor is not None:
            return self.supervisor.health_problem()
        return "the engine core is not running" if self.engine.errored else None

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def wait_loaded(self) -> None:
        """Until loading ended, ready or failed (load_error): for in-process users (run-batch)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    def _make_client(self) -> MPClient | DPLBClient:
        """A started engine-core client (one core, or -dp N of them), not yet ready (at start-up
        and at every restart)."""
        from pagedllm.engine.dp_client import make_core_client

        # (-dp N: a dead core of the N is restarted by the client; all dead: the supervisor)
        return make_core_client(self.settings.engine_args, wait_ready=False,
                                restart_cores=self.settings.restart_policy.enabled)

    async def _load(self) -> None:
        settings = self.settings
        # The tokenizer loads in this process while the engine process loads the model; both in
        # threads, as their imports (transformers, torch) take seconds /health must not wait for.
        tokenizer = asyncio.ensure_future(asyncio.to_thread(_load_tokenizer,
                                                            settings.engine_args.model))
        try:
            self._client = self._make_client()
            await asyncio.to_thread(self._client.wait_ready, settings.engine_startup_timeout)
            engine = await asyncio.to_thread(_make_engine, self._client, await tokenizer)
            models = self._make_models(engine)
        except Exception as e:
            if self._client is not None:
                self._client.shutdown(timeout=0.0)
                self._client = None  # drop it so its IPC objects go now
            tokenizer.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.load_error = str(e)
            logger.error("engine failed to start: %s", e)
            if self.on_fatal is not None:
                self.on_fatal(str(e))
            return
        self._install(engine, models)

    def _make_models(self, engine: AsyncLLM) -> OpenAIServingModels:
        """The served names and the --lora-modules adapters (a bad one stops the start-up)."""
        settings, config = self.settings, engine.model_config
        try:
            return OpenAIServingModels(settings.served_model_names, config.path,
                                       config.max_model_len, settings.lora_modules,
                                       engine.input_processor, settings.lora_dir)
        except OpenAIError as e:
            raise ValueError(f"--lora-modules: {e.message}") from e

    def _install(self, engine: AsyncLLM, models: OpenAIServingModels) -> None:
        from pagedllm.entrypoints.anthropic.serving_messages import AnthropicServingMessages
        from pagedllm.entrypoints.ollama.serving import OllamaServing
        from pagedllm.entrypoints.openai.responses_store import ResponseStore
        from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
        from pagedllm.entrypoints.openai.serving_classification import (
            OpenAIServingClassification,
        )
        from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
        from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
        from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
        from pagedllm.entrypoints.openai.serving_score import OpenAIServingScore
        from pagedllm.entrypoints.openai.serving_tokenize import OpenAIServingTokenization

        settings = self.settings
        config = engine.model_config
        for engine_idx, blocks in enumerate(engine.engine_core.kv_blocks_per_engine):
            self.metrics.set_num_kv_blocks(blocks, engine_idx)
        engine.stat_loggers.extend([self.metrics, LoggingStatLogger()])
        if settings.otlp_traces_endpoint:
            from pagedllm.metrics.tracing import OtelTraceLogger, init_tracer

            tracer = init_tracer(settings.otlp_traces_endpoint)
            engine.stat_loggers.append(OtelTraceLogger(tracer, settings.served_model_names[0]))
            engine.tracing = True
            logger.info("tracing: a span per request to %s", settings.otlp_traces_endpoint)
        self.models = models
        self.completion = OpenAIServingCompletion(engine, self.models)
        self.chat = OpenAIServingChat(engine, self.models, _chat_settings(settings))
        self.completion.request_timeout = settings.request_timeout
        self.chat.request_timeout = settings.request_timeout
        if settings.admission.enabled:
            self.admission = AdmissionControl(settings.admission, engine)
            self.completion.admission = self.chat.admission = self.admission
        self.tokenization = OpenAIServingTokenization(self.chat)
        self.embedding = OpenAIServingEmbedding(engine, self.models)
        store = (ResponseStore(settings.responses_api_store_max_size)
                 if settings.enable_responses_api_store else None)
        self.responses = OpenAIServingResponses(self.chat, store)
        self.anthropic = AnthropicServingMessages(self.chat)
        self.ollama = OllamaServing(self.chat, self.embedding)
        self.classification = OpenAIServingClassification(engine, self.models)
        self.score = OpenAIServingScore(self.embedding, self.classification)
        self.supervisor = EngineSupervisor(
            engine, self._make_client, settings.restart_policy, self.metrics.registry,
            on_restarted=lambda client: self.metrics.set_num_kv_blocks(client.num_kv_blocks or 0))
        engine.start()  # read outputs from now on, so an idle core's death is seen too
        self.engine = engine
        kv_bytes = engine.engine_core.kv_cache_bytes
        logger.info(
            "model %s loaded (served as %s, task %s): max_model_len %d, %d KV cache blocks x %d "
            "tokens%s; engine core pid %s, API server pid %d",
            config.model, ", ".join(settings.served_model_names), config.task,
            config.max_model_len,
            engine.engine_core.num_kv_blocks, engine.config.cache.block_size,
            f" ({format_bytes(kv_bytes)})" if kv_bytes else "", engine.engine_core.pid,
            os.getpid(),
        )

    def abort_all(self) -> None:
        """Graceful period over: end in-flight requests cleanly (an error event / a 503)."""
        if self.engine is not None and self.engine.num_unfinished_requests:
            logger.warning("aborting %d in-flight request(s) at shutdown",
                           self.engine.num_unfinished_requests)
            self.engine.abort_all()

    async def shutdown(self) -> None:
        """Abort what is left and stop the engine-core process."""
        if self._client is not None and not self.ready:
            self._client.shutdown(timeout=0.0)  # still loading: nothing to save
        if self._load_task is not None:
            await asyncio.gather(self._load_task, return_exceptions=True)
        if self.supervisor is not None:
            await self.supervisor.close()
        if self.engine is not None:
            self.engine.shutdown()  # blocks (joins the engine process): shutdown only
        logger.info("engine stopped")


def _chat_settings(settings: ServerSettings) -> Any:
    from pagedllm.entrypoints.openai.chat_tools import ToolSettings
    from pagedllm.entrypoints.openai.serving_chat import ChatSettings

    return ChatSettings(
        chat_template=settings.chat_template,
        tools=ToolSettings(settings.enable_auto_tool_choice, settings.tool_call_parser,
                           settings.exclude_tools_when_tool_choice_none),
        reasoning_parser=settings.engine_args.reasoning_parser,
        default_chat_template_kwargs=settings.default_chat_template_kwargs,
        trust_request_chat_template=settings.trust_request_chat_template)


def _load_tokenizer(model: str | None) -> Any:
    from pagedllm.tokenizer.loader import load_tokenizer
    from pagedllm.utils.transformers_import import import_transformers

    import_transformers()  # (the engine client's start-up thread may be importing it too)
    return load_tokenizer(model)


def _make_engine(client: MPClient | DPLBClient, tokenizer: Any) -> AsyncLLM:
    from pagedllm.engine.async_llm import AsyncLLM, limit_torch_threads

    limit_torch_threads()
    return AsyncLLM(client, tokenizer)
