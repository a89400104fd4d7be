"""AsyncLLM: the server's engine. `generate()` is an async iterator of RequestOutputs; the engine
core runs in its own process behind an MPClient.

    HTTP handlers ── generate()/abort() ──▶ InputProcessor ──▶ MPClient ──▶ engine-core process
         ▲                                                                        │
         └── per-request asyncio.Queue ◀── output task (OutputProcessor) ◀── reader thread

The reader thread only blocks on the pipe and hands each EngineCoreOutputs to the event loop; the
output task detokenizes, applies stop strings and routes outputs, all on the event loop, so the
processors need no locks. Neither ever waits for an engine step, and the engine process never
waits for HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.core_client import EngineDeadError, MPClient
from pagedllm.engine.input_processor import InputProcessor, PromptType
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_intake import RequestIntake
from pagedllm.logger import init_logger
from pagedllm.lora.request import LoRARequest
from pagedllm.metrics.loggers import StatLoggerBase
from pagedllm.metrics.request_stats import IterationStats, RequestStatsTracker
from pagedllm.metrics.tracing import REQUEST_ATTRIBUTES, TRACE_HEADERS
from pagedllm.outputs import EmbeddingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams

logger = init_logger(__name__)

_LOG_INTERVAL = 5.0


class AsyncLLM:
    def __init__(self, engine_core: MPClient, tokenizer: Any,
                 stat_loggers: list[StatLoggerBase] | None = None) -> None:
        assert engine_core.config is not None, "the engine core must be ready"
        self.engine_core = engine_core
        self.config = engine_core.config
        self.model_config = self.config.model
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor(self.model_config, tokenizer,
                                              self.config.structured_outputs, self.config.lora,
                                              self.config.multimodal)
        self.output_processor = OutputProcessor(tokenizer)
        self.stat_loggers = list(stat_loggers or [])
        self.request_stats = RequestStatsTracker()
        self.tracing = False
        """Trace spans are recorded (--otlp-traces-endpoint): requests keep their attributes."""
        self._streams: dict[str, asyncio.Queue] = {}
        """Parent request id -> queue of RequestOutput (or the exception that ended it)."""
        self.intake = RequestIntake(self.input_processor, self.output_processor)
        self._queued: dict[str, int] = {}
        """Engine-core request id -> prompt tokens, from add until its first output arrives: the
        requests the engine core may still hold in its waiting queue (admission control reads
        `num_queued_requests` / `num_queued_tokens`)."""
        self._queued_tokens = 0
        self._output_task: asyncio.Task | None = None
        self._outputs_queue: asyncio.Queue | None = None
        self._dead_error: BaseException | None = None
        self._shutting_down = False
        self._last_log = time.monotonic()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         stat_loggers: list[StatLoggerBase] | None = None) -> AsyncLLM:
        """Start the engine-core process and load the tokenizer. Blocking (seconds): call it in a
        thread. Raises EngineStartupFailed with the core's message if the model cannot start."""
        return cls.from_client(MPClient(engine_args), stat_loggers)

    @classmethod
    def from_client(cls, client: MPClient,
                    stat_loggers: list[StatLoggerBase] | None = None) -> AsyncLLM:
        """Wrap a ready MPClient: load the tokenizer (blocking) in this process."""
        from pagedllm.tokenizer.loader import load_tokenizer

        assert client.config is not None, "wait_ready() first"
        try:
            tokenizer = load_tokenizer(client.config.model)
        except BaseException:
            client.shutdown()
            raise
        limit_torch_threads()
        from pagedllm.model_executor.model_loader.gguf import release_gguf_readers

        release_gguf_readers()  # the tokenizer is built: the parsed GGUF is not needed here
        return cls(client, tokenizer, stat_loggers)

    # ---- public API -----------------------------------------------------------------------------

    @property
    def errored(self) -> bool:
        return self._dead_error is not None

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    @property
    def num_queued_requests(self) -> int:
        """Engine-core requests (one per sample) added and not yet given any output."""
        return len(self._queued)

    @property
    def num_queued_tokens(self) -> int:
        """Prompt tokens of `num_queued_requests`."""
        return self._queued_tokens

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs as the engine produces them.

        `sampling_params.output_kind` chooses DELTA (only what is new) or CUMULATIVE (everything so
        far) outputs; the last one has `finished=True`. Bad input raises ValueError before anything
        is queued. Leaving the iteration early (client disconnect, cancellation) aborts the request
        and frees its KV blocks.
        """
        self._start_output_handler()
        if self._dead_error is not None:
            raise EngineDeadError("the engine core is not running") from self._dead_error
        stream = self._add_request(request_id, prompt, sampling_params, arrival_time, priority,
                                   lora_request)
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._abort(request_id)

    async def encode(
        self,
        prompt: PromptType,
        pooling_params: PoolingParams,
        request_id: str,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[EmbeddingRequestOutput]:
        """The embedding of one prompt (a single, finished output). Bad input raises ValueError
        before anything is queued; leaving early aborts the request."""
        self._start_output_handler()
        if self._dead_error is not None:
            raise EngineDeadError("the engine core is not running") from self._dead_error
        stream = self._add_request(request_id, prompt, pooling_params, arrival_time, priority)
        finished = False
        try:
            item = await stream.get()
            if isinstance(item, BaseException):
                raise item
            finished = True
            yield item
        finally:
            if not finished:
                self._abort(request_id)

    async def abort(self, request_id: str | list[str]) -> None:
        self._abort(request_id)

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def check_health(self) -> None:
        if self._dead_error is not None or not self.engine_core.is_alive():
            raise EngineDeadError("the engine core is not running")

    def abort_all(self, message: str = "the server is shutting down") -> None:
        """End every request now: their iterators raise EngineDeadError(message)."""
        error = EngineDeadError(message)
        for stream in self._streams.values():
            stream.put_nowait(error)
        self._abort(list(self._streams))

    def shutdown(self) -> None:
        """Stop the engine-core process; outstanding requests end with EngineDeadError."""
        self._shutting_down = True
        if self._output_task is not None:
            self._output_task.cancel()
        self._fail_all(EngineDeadError("the server is shutting down"))
        self.engine_core.shutdown()

    # ---- requests -----------------------------------------------------------------------------

    def _add_request(self, request_id: str, prompt: PromptType,
                     params: SamplingParams | PoolingParams, arrival_time: float | None,
                     priority: int, lora_request: LoRARequest | None = None) -> asyncio.Queue:
        accepted = self.intake.add(request_id, prompt, params, arrival_time, priority,
                                   lora_request)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = stream
        now = time.monotonic()
        trace_headers, attributes = None, {}
        if self.tracing:  # the server's middleware set the HTTP request's trace context
            trace_headers = TRACE_HEADERS.get()
            attributes = {name: getattr(params, name, None) for name in REQUEST_ATTRIBUTES}
        for core_request in accepted.core_requests:
            self.request_stats.add_request(core_request.request_id,
                                           len(accepted.prompt_token_ids), now,
                                           lora_request and lora_request.lora_name,
                                           trace_headers, attributes)
            self.engine_core.add_request(core_request)
            self._mark_queued(core_request.request_id, len(accepted.prompt_token_ids))
        return stream

    def _mark_queued(self, child_id: str, num_tokens: int) -> None:
        self._queued[child_id] = num_tokens
        self._queued_tokens += num_tokens

    def _unmark_queued(self, child_ids: Any) -> None:
        for child_id in child_ids:
            self._queued_tokens -= self._queued.pop(child_id, 0)

    def _abort(self, request_id: str | list[str]) -> None:
        request_ids = [request_id] if isinstance(request_id, str) else request_id
        child_ids = self.intake.abort(request_ids)
        self._unmark_queued(child_ids)
        for r in request_ids:
            self._streams.pop(r, None)
        if not child_ids:
            return
        self.engine_core.abort_requests(child_ids)
        stats = IterationStats()
        for child_id in child_ids:
            self.request_stats.finish(child_id, "abort", time.monotonic(), stats)
        self._record(None, stats)
        logger.debug("aborted request(s) %s", request_ids)

    # ---- output handling ----------------------------------------------------------------------

    def _start_output_handler(self) -> None:
        if self._output_task is not None:
            return
        loop = asyncio.get_running_loop()
        self._outputs_queue = asyncio.Queue()
        threading.Thread(target=self._read_outputs, args=(loop, self._outputs_queue),
                         name="EngineOutputReader", daemon=True).start()
        self._output_task = loop.create_task(self._process_outputs_loop())

    def _read_outputs(self, loop: asyncio.AbstractEventLoop, out: asyncio.Queue) -> None:
        """Reader thread: block on the engine's pipe, hand every batch to the event loop."""
        while True:
            try:
                item: EngineCoreOutputs | BaseException = self.engine_core.get_output()
            except EngineDeadError as e:
                item = e
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:
                return  # the loop is closed
            if isinstance(item, BaseException):
                return

    async def _process_outputs_loop(self) -> None:
        assert self._outputs_queue is not None
        while True:
            item = await self._outputs_queue.get()
            if isinstance(item, BaseException):
                if not self._shutting_down:
                    logger.error("engine core died: %s", item)
                self._dead_error = item
                self._fail_all(item)
                return
            try:
                self._handle_outputs(item)
            except Exception:  # one bad batch must not stop the server's output handling
                logger.exception("error processing engine outputs")

    def _handle_outputs(self, outputs: EngineCoreOutputs) -> None:
        if self._queued:  # a first output: the request left the engine's waiting queue
            self._unmark_queued(output.request_id for output in outputs.outputs)
        processed = self.output_processor.process_outputs(outputs.outputs)
        if processed.reqs_to_abort:
            self.engine_core.finish_requests_stopped(processed.reqs_to_abort)
        iteration = self.request_stats.update(outputs.outputs, processed.reqs_to_abort,
                                              time.monotonic())
        for request_output in processed.request_outputs:
            request_id = request_output.request_id
            stream = self._streams.get(request_id)
            if request_output.finished:
                self._streams.pop(request_id, None)
                self.intake.finished(request_id)
            if stream is not None:
                stream.put_nowait(request_output)
        self._record(outputs.scheduler_stats, iteration)

    def _record(self, scheduler_stats: Any, iteration: IterationStats | None) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record(scheduler_stats, iteration)
        now = time.monotonic()
        if now - self._last_log >= _LOG_INTERVAL:
            self._last_log = now
            for stat_logger in self.stat_loggers:
                stat_logger.log()

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)
        self._streams.clear()
        self.intake.clear()
        self._queued.clear()
        self._queued_tokens = 0


def limit_torch_threads() -> None:
    """The API process must not compete with the engine for cores: if a library (transformers'
    tokenizer) pulled torch in, keep it to one thread."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
