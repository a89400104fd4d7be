"""AsyncLLM: the server's engine. `generate()` is an async iterator of RequestOutputs; the engine
core runs in its own process behind an MPClient.

    HTTP handlers ── generate()/abort() ──▶ InputProcessor ──▶ MPClient ──▶ engine-core process
         ▲                                                                        │
         └── per-request collector ◀── output task (OutputProcessor) ◀── reader thread

The reader thread only blocks on the pipe and hands each EngineCoreOutputs to the event loop; the
output task detokenizes, applies stop strings and routes outputs, all on the event loop, so the
processors need no locks. Neither ever waits for an engine step, and the engine process never
waits for HTTP.

Nothing grows with a slow consumer: each request's RequestOutputCollector holds one pending
output (a slow reader gets the deltas merged), and the reader thread hands at most
_MAX_PENDING_BATCHES batches to the event loop before it waits (then the pipe, and in the end the
engine core, wait for the event loop).

Supervision: when the engine core dies (crash, kill -9, OOM) the client's get_output() raises
EngineDeadError; the output task then fails every in-flight request with it, marks the engine
`errored` and calls the `on_engine_dead` callbacks. The server's supervisor may then hand a fresh
client to `replace_engine_core` (nothing that was in flight is re-admitted).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.core_client import EngineDeadError, MPClient
from pagedllm.engine.dp_client import DPLBClient, EngineCoreDied, make_core_client
from pagedllm.engine.input_processor import InputProcessor, PromptType
from pagedllm.engine.messages import EngineCoreOutputs
from pagedllm.engine.output_collector import RequestOutputCollector
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_intake import RequestIntake
from pagedllm.engine.tenant import current_tenant
from pagedllm.logger import init_logger
from pagedllm.lora.request import LoRARequest
from pagedllm.metrics.loggers import StatLoggerBase
from pagedllm.metrics.request_stats import IterationStats, RequestStatsTracker
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.metrics.tracing import REQUEST_ATTRIBUTES, TRACE_HEADERS
from pagedllm.outputs import EmbeddingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

logger = init_logger(__name__)

_LOG_INTERVAL = 5.0
_MAX_PENDING_BATCHES = 64
"""Engine output batches read from the pipe and not yet processed by the event loop."""


class AsyncLLM:
    def __init__(self, engine_core: MPClient | DPLBClient, tokenizer: Any,
                 stat_loggers: list[StatLoggerBase] | None = None) -> None:
        assert engine_core.config is not None, "the engine core must be ready"
        self.engine_core = engine_core
        self.config = engine_core.config
        self.model_config = self.config.model
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor(self.model_config, tokenizer,
                                              self.config.structured_outputs, self.config.lora,
                                              scheduling_policy=self.config.scheduler.policy,
                                              multimodal=self.config.multimodal,
                                              scheduler=self.config.scheduler)
        self.output_processor = OutputProcessor(tokenizer)
        self.stat_loggers = list(stat_loggers or [])
        self.request_stats = RequestStatsTracker()
        self.tracing = False
        """Trace spans are recorded (--otlp-traces-endpoint): requests keep their attributes."""
        self._streams: dict[str, RequestOutputCollector] = {}
        """Parent request id -> its pending RequestOutput (or the exception that ended it)."""
        self.intake = RequestIntake(self.input_processor, self.output_processor)
        self._queued: dict[str, int] = {}
        """Engine-core request id -> prompt tokens, from add until its first output arrives: the
        requests the engine core may still hold in its waiting queue (admission control reads
        `num_queued_requests` / `num_queued_tokens`)."""
        self._queued_tokens = 0
        self._output_task: asyncio.Task | None = None
        self._outputs_queue: asyncio.Queue | None = None
        self._dead_error: BaseException | None = None
        self.on_engine_dead: list[Callable[[BaseException], None]] = []
        """Called on the event loop once the engine core died (not at shutdown), after every
        in-flight request was failed: the server's supervisor restarts the core from here."""
        self._shutting_down = False
        self._last_log = time.monotonic()
        self.last_progress = time.monotonic()
        """When the engine core last sent outputs, or work arrived at an idle engine: a
        supervisor's hang watchdog compares it with the clock while requests are in flight."""

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs,
                         stat_loggers: list[StatLoggerBase] | None = None) -> AsyncLLM:
        """Start the engine-core process and load the tokenizer. Blocking (seconds): call it in a
        thread. Raises EngineStartupFailed with the core's message if the model cannot start."""
        return cls.from_client(make_core_client(engine_args), stat_loggers)

    @classmethod
    def from_client(cls, client: MPClient | DPLBClient,
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
        """The engine core is gone (seen by the output task, or its process has exited)."""
        return self._dead_error is not None or not self.engine_core.is_alive()

    def start(self) -> None:
        """Start reading the engine's outputs now (idempotent; generate() does it otherwise), so
        an idle engine core's death is noticed too. Call from the event loop."""
        self._start_output_handler()

    def replace_engine_core(self, engine_core: MPClient) -> None:
        """Carry on with a fresh, ready engine core after the old one died. Call from the event
        loop. Nothing of the old core survives: its requests were failed when it died."""
        assert self._dead_error is not None, "the engine core is still running"
        assert engine_core.config is not None, "wait_ready() first"
        old = self.engine_core
        self.engine_core = engine_core
        self._dead_error = None
        self._output_task = None
        self.last_progress = time.monotonic()
        self._start_output_handler()
        old.shutdown(timeout=0.0)  # the process is gone: this only releases its pipes

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

    async def remove_lora(self, lora_id: int) -> bool:
        """Unload an adapter in the engine core: its CPU copy and slot are freed, at once or
        when its last request ends (vLLM's name)."""
        self._start_output_handler()  # (the reply comes back on the output pipe)
        return await asyncio.wrap_future(self.engine_core.call_utility("remove_lora", lora_id))

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
                     priority: int, lora_request: LoRARequest | None = None,
                     ) -> RequestOutputCollector:
        accepted = self.intake.add(request_id, prompt, params, arrival_time, priority,
                                   lora_request)
        if not self._streams:
            self.last_progress = time.monotonic()  # the clock starts with the first request
        stream = RequestOutputCollector(
            aggregate=isinstance(params, SamplingParams)
            and params.output_kind == RequestOutputKind.DELTA)
        self._streams[request_id] = stream
        now = time.monotonic()
        trace_headers, attributes = None, {}
        if self.tracing:  # the server's middleware set the HTTP request's trace context
            trace_headers = TRACE_HEADERS.get()
            attributes = {name: getattr(params, name, None) for name in REQUEST_ATTRIBUTES}
        tenant = current_tenant.get()
        for core_request in accepted.core_requests:
            if tenant is not None:
                core_request.tenant, core_request.tenant_weight = tenant.name, tenant.weight
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
        per_engine: dict[int, IterationStats] = {}
        for child_id in child_ids:  # before the abort: the DP client then forgets the owner
            stats = per_engine.setdefault(self.engine_core.engine_index_of(child_id),
                                          IterationStats())
            self.request_stats.finish(child_id, "abort", time.monotonic(), stats)
        self.engine_core.abort_requests(child_ids)
        for engine_index, stats in per_engine.items():
            self._record(None, stats, engine_index)
        logger.debug("aborted request(s) %s", request_ids)

    # ---- output handling ----------------------------------------------------------------------

    def _start_output_handler(self) -> None:
        if self._output_task is not None:
            return
        loop = asyncio.get_running_loop()
        self._outputs_queue = queue = asyncio.Queue()
        slots = threading.BoundedSemaphore(_MAX_PENDING_BATCHES)
        threading.Thread(target=self._read_outputs, args=(self.engine_core, loop, queue, slots),
                         name="EngineOutputReader", daemon=True).start()
        self._output_task = loop.create_task(self._process_outputs_loop(queue, slots))

    @staticmethod
    def _read_outputs(client: MPClient, loop: asyncio.AbstractEventLoop, out: asyncio.Queue,
                      slots: threading.BoundedSemaphore) -> None:
        """Reader thread: block on the engine's pipe, hand every batch to the event loop (at
        most _MAX_PENDING_BATCHES unprocessed: beyond, it waits and the pipe fills)."""
        while True:
            try:
                item: EngineCoreOutputs | BaseException = client.get_output()
            except EngineCoreDied as e:  # one data-parallel core: the others go on
                item = EngineCoreDied(str(e), e.engine_index, e.request_ids)
            except EngineDeadError as e:
                # A fresh copy without the traceback: the caught one's frames hold the dead
                # client (its pipes and queue) in a reference cycle until a garbage collection.
                item = EngineDeadError(*e.args)
            slots.acquire()
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:
                return  # the loop is closed
            if isinstance(item, BaseException) and not isinstance(item, EngineCoreDied):
                return

    async def _process_outputs_loop(self, queue: asyncio.Queue,
                                    slots: threading.BoundedSemaphore) -> None:
        while True:
            item = await queue.get()
            slots.release()
            self.last_progress = time.monotonic()
            if isinstance(item, EngineCoreDied):
                self._fail_core(item)
                continue
            if isinstance(item, BaseException):
                self._dead_error = item
                self._fail_all(item)
                if not self._shutting_down:
                    logger.error("engine core died: %s", item)
                    self._notify_dead(item)
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
        self._record(outputs.scheduler_stats, iteration, outputs.engine_index)

    def _record(self, scheduler_stats: Any, iteration: IterationStats | None,
                engine_index: int = 0) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record(scheduler_stats, iteration, engine_index)
        now = time.monotonic()
        if now - self._last_log >= _LOG_INTERVAL:
            self._last_log = now
            for stat_logger in self.stat_loggers:
                stat_logger.log()

    def _fail_core(self, error: EngineCoreDied) -> None:
        """One data-parallel core died: its requests end with the error (their samples on other
        cores are aborted); the other cores finish what they hold. The engine is unhealthy from
        now on (new requests are refused) unless the client restarts its cores (restart_cores:
        then the live cores take new requests meanwhile)."""
        if not getattr(self.engine_core, "restart_cores", False):
            self._dead_error = error
        # (else the client restarts the core; is_alive() says whether the others serve)
        lost = IterationStats()  # counted under the dead core (its requests have no owner now)
        for child_id in error.request_ids:
            self.request_stats.finish(child_id, "abort", time.monotonic(), lost)
        self._record(SchedulerStats(), lost, error.engine_index)  # nothing runs there now
        parents = self.intake.parents_of(error.request_ids)
        for request_id in parents:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(error)
        self._abort(parents)

    def _notify_dead(self, error: BaseException) -> None:
        for callback in list(self.on_engine_dead):
            try:
                callback(error)
            except Exception:  # one bad callback must not keep the others from running
                logger.exception("error in an on_engine_dead callback")

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)
        # Forget their state here (detokenizers, stats): the engine core that held them is gone.
        child_ids = self.intake.abort(list(self._streams))
        stats = IterationStats()
        for child_id in child_ids:
            self.request_stats.finish(child_id, "abort", time.monotonic(), stats)
        # The dead core's last stats said what it was running: nothing runs or waits now.
        self._record(SchedulerStats(), stats)
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
