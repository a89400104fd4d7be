"""Clients of the engine core, one interface: InprocClient runs it in the caller's process (offline,
tests); MPClient runs it in its own process (the server)."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from pagedllm.config import EngineConfig
from pagedllm.engine.messages import EngineCoreOutputs, EngineCoreRequest

if TYPE_CHECKING:
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.metrics.step_profile import StepProfiler


_LIVENESS_POLL_SECONDS = 0.5
"""How often a reader waiting for outputs checks that the engine-core process still runs."""


class EngineCoreClient(ABC):
    @abstractmethod
    def add_request(self, request: EngineCoreRequest) -> None: ...

    @abstractmethod
    def abort_requests(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def finish_requests_stopped(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def get_output(self) -> EngineCoreOutputs: ...

    def shutdown(self) -> None:
        pass

    # What the front end's metrics read; one engine core unless data parallel (dp_client.py).
    num_kv_blocks: int | None

    @property
    def num_engines(self) -> int:
        """Engine cores behind this client; each output batch names its core (engine_index)."""
        return 1

    @property
    def kv_blocks_per_engine(self) -> list[int]:
        return [self.num_kv_blocks or 0]

    def engine_index_of(self, request_id: str) -> int:
        """The engine core that holds the request."""
        return 0


class InprocClient(EngineCoreClient):
    """Runs the engine core in this process: get_output() runs one step."""

    def __init__(self, config: EngineConfig) -> None:
        from pagedllm.engine.core_factory import make_engine_core

        self.engine_core = make_engine_core(config)

    def add_request(self, request: EngineCoreRequest) -> None:
        self.engine_core.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.engine_core.abort_requests(request_ids)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        self.engine_core.finish_requests_stopped(request_ids)

    def get_output(self) -> EngineCoreOutputs:
        return self.engine_core.step()

    def shutdown(self) -> None:
        """Stop the executor's workers (worker processes or Ray actors under -tp)."""
        self.engine_core.shutdown()

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        """Call Worker.<method>(*args) on every worker; their results by rank."""
        return self.engine_core.executor.collective_rpc(method, args)

    def remove_lora(self, lora_id: int) -> bool:
        return self.engine_core.remove_lora(lora_id)  # type: ignore[attr-defined]

    @property
    def num_kv_blocks(self) -> int:
        return self.engine_core.num_blocks

    @property
    def step_profiler(self) -> StepProfiler | None:
        return self.engine_core.step_profiler


class EngineDeadError(RuntimeError):
    """The engine-core process stopped; no request can make progress.

    The one signal of a dead engine core, whatever the client: `get_output()` raises it (and fails
    pending utility calls with it) once the core is gone, and `AsyncLLM` turns it into failed
    requests, an unhealthy server and its `on_engine_dead` callbacks (the server's supervisor)."""


def describe_exit(exitcode: int | None) -> str:
    """A process's exit for a log line: "exit code 1", "killed by SIGKILL" (OOM killer, kill -9)."""
    import signal

    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory, or kill -9)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


class EngineStartupFailed(RuntimeError):
    """The engine-core process could not start (model not found, KV cache too small, ...)."""


class FrameSendingClient(EngineCoreClient):
    """What the clients of an engine core outside this process share (MPClient: a spawned
    process; ray_core.RayCoreClient: a Ray actor): requests leave as typed MessagePack frames
    (core_ipc.encode_input) queued for the subclass's feeder thread, and utility calls are
    futures resolved when their UtilityOutput comes back (`_resolve_call`, from get_output)."""

    _frames: queue.SimpleQueue[bytes | None]
    _closing: bool
    _call_ids: itertools.count
    _pending_calls: dict[int, Future]
    _call_methods: dict[int, str]

    @abstractmethod
    def _dead_reason(self) -> str | None:
        """Why the core can no longer answer (None while it can): a call then fails at once,
        since no reader would ever resolve it."""

    def _send(self, kind: Any, payload: Any) -> None:
        from pagedllm.engine.core_ipc import encode_input

        if self._closing:
            return
        self._frames.put(encode_input(kind, payload))

    def add_request(self, request: EngineCoreRequest) -> None:
        from pagedllm.engine.core_ipc import EngineCoreRequestType

        self._send(EngineCoreRequestType.ADD, request)

    def abort_requests(self, request_ids: list[str]) -> None:
        from pagedllm.engine.core_ipc import EngineCoreRequestType

        if request_ids:
            self._send(EngineCoreRequestType.ABORT, list(request_ids))

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        from pagedllm.engine.core_ipc import EngineCoreRequestType

        if request_ids:
            self._send(EngineCoreRequestType.FINISH_STOPPED, list(request_ids))

    def call_utility(self, method: str, *args: Any) -> Future:
        """Call EngineCoreProc.<method>(*args) in the engine core; resolved by get_output()'s
        reader, so it needs someone consuming outputs."""
        from pagedllm.engine.core_ipc import EngineCoreRequestType

        future: Future = Future()
        if (reason := self._dead_reason()) is not None:
            future.set_exception(EngineDeadError(reason))
            return future
        call_id = next(self._call_ids)
        self._call_methods[call_id] = method
        self._pending_calls[call_id] = future
        self._send(EngineCoreRequestType.UTILITY, (call_id, method, args))
        return future

    @abstractmethod
    def _wait_ready(self, timeout: float | None) -> Any:
        """Block until the core's first message arrives (EngineStartupFailed on a timeout, a
        cancel or the core's death); return _accept_ready(message)."""

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the core has loaded the model; EngineStartupFailed (the core is then
        stopped) if it cannot. Safe to call from a thread while another calls shutdown()."""
        try:
            ready = self._wait_ready(timeout)
        except BaseException:
            self.shutdown(timeout=0.0)
            raise
        self.config = ready.config
        self.num_kv_blocks = ready.num_kv_blocks
        self.kv_cache_bytes = ready.kv_cache_bytes

    def _accept_ready(self, message: Any) -> Any:
        """The core's first message: EngineReady (its config completed here), else
        EngineStartupFailed with the core's reason."""
        from pagedllm.engine.core_ipc import EngineReady, EngineStartupError, with_hf_config

        if isinstance(message, EngineStartupError):
            raise EngineStartupFailed(message.message)
        if not isinstance(message, EngineReady):
            raise EngineStartupFailed(f"unexpected first message from the engine core: "
                                      f"{type(message).__name__}")
        self.last_heard = time.monotonic()
        with_hf_config(message.config, message.hf_fields)
        return message

    def _resolve_call(self, message: Any) -> None:
        self._call_methods.pop(message.call_id, None)
        future = self._pending_calls.pop(message.call_id, None)
        if future is None:
            return
        if message.error is not None:
            future.set_exception(RuntimeError(message.error))
        else:
            future.set_result(message.result)


class MPClient(FrameSendingClient):
    """Runs the engine core in a spawned process (core_proc.py; the protocol: core_ipc.py).

    Both directions carry typed MessagePack frames (core_ipc.py), never pickle. Sending never
    blocks (frames are encoded by the caller, written by a feeder thread); get_output() blocks
    until the core publishes its next EngineCoreOutputs, so one thread of the caller should own
    it. The constructor blocks until the model is loaded and raises EngineStartupFailed with the
    child's message if it is not.

    `target` is the engine-core process's entry point (tests wrap run_engine_core).
    """

    def __init__(self, engine_args: EngineArgs, startup_timeout: float | None = None,
                 wait_ready: bool = True, target: Any = None) -> None:
        from pagedllm.engine.core_proc import run_engine_core
        from pagedllm.utils.process_start import process_context, start_process

        ctx = process_context()
        child_input, self._input_conn = ctx.Pipe(duplex=False)
        self._output_conn, child_output = ctx.Pipe(duplex=False)
        self._proc = start_process(ctx, target or run_engine_core,
                                   (engine_args, child_input, child_output), name="EngineCore")
        child_output.close()  # so recv_bytes() sees EOF when the child exits
        child_input.close()
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._feed, name="EngineCoreFeeder", daemon=True).start()
        self._closing = False
        self._kill_reason: str | None = None
        self._call_ids = itertools.count()
        self._pending_calls: dict[int, Future] = {}
        self._call_methods: dict[int, str] = {}
        self.last_heard = time.monotonic()
        """When the core last sent anything (outputs, a heartbeat while idle): a supervisor's
        watchdog and /health tell a live loop from a stopped one by it."""
        self.config: EngineConfig | None = None
        self.num_kv_blocks: int | None = None
        self.kv_cache_bytes: int | None = None
        if wait_ready:
            self.wait_ready(startup_timeout)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def is_alive(self) -> bool:
        return self._proc.is_alive()

    def kill(self, reason: str) -> None:
        """SIGKILL the engine core (it hangs): the reader then raises EngineDeadError(reason)."""
        self._kill_reason = reason
        self._proc.kill()

    @property
    def sentinel(self) -> int:
        """Ready for `multiprocessing.connection.wait` once the engine-core process has ended."""
        return self._proc.sentinel

    def _feed(self) -> None:
        """Feeder thread: write the encoded frames in order (a full pipe blocks here, not the
        caller); ends at None or when the core is gone."""
        while (frame := self._frames.get()) is not None:
            try:
                self._input_conn.send_bytes(frame)
            except OSError:  # the core died; get_output() reports it
                return

    def _wait_ready(self, timeout: float | None) -> Any:
        from pagedllm.engine.core_ipc import decode_output

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._output_conn.poll(0.1):
            if self._closing:
                raise EngineStartupFailed("engine start-up cancelled (shutting down)")
            if not self._proc.is_alive() and not self._output_conn.poll(0):
                raise EngineStartupFailed(
                    f"engine core process exited during start-up (exit code {self._proc.exitcode})"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise EngineStartupFailed(f"engine core did not start within {timeout:.0f} s")
        try:
            message = decode_output(self._output_conn.recv_bytes())
        except (EOFError, OSError) as e:
            raise EngineStartupFailed(
                f"engine core process exited during start-up (exit code {self._proc.exitcode})"
            ) from e
        return self._accept_ready(message)

    def _dead_reason(self) -> str | None:
        if self._proc.is_alive():
            return None
        return f"engine core process died ({describe_exit(self._proc.exitcode)})"

    def get_output(self) -> EngineCoreOutputs:
        """The core's next outputs; EngineDeadError once the process has ended and everything it
        sent was read."""
        from multiprocessing.connection import wait

        from pagedllm.engine.core_ipc import Heartbeat, UtilityOutput, decode_output

        while True:
            # Wait on the process too, not only the pipe: a child of the core (a worker rank)
            # that inherited the pipe's write end would keep EOF from ever arriving. A forked
            # child holds the sentinel's pipe as well, hence the periodic waitpid on a timeout.
            ready = wait([self._output_conn, self._proc.sentinel], _LIVENESS_POLL_SECONDS)
            if self._output_conn not in ready and not self._output_conn.poll(0):
                if ready or not self._proc.is_alive():
                    raise self._died()
                continue
            try:
                frame = self._output_conn.recv_bytes()
            except (EOFError, OSError) as e:
                raise self._died() from e
            self.last_heard = time.monotonic()
            message = decode_output(frame, self._call_methods)
            if isinstance(message, Heartbeat):
                continue
            if isinstance(message, UtilityOutput):
                self._resolve_call(message)
                continue
            if not isinstance(message, EngineCoreOutputs):
                raise self._protocol_error(message)
            return message

    def _protocol_error(self, message: Any) -> EngineDeadError:
        """The core sent what it never should mid-run: it is not trusted further."""
        reason = f"the engine core sent an unexpected {type(message).__name__}; killed"
        self.kill(reason)
        return self._died()

    def _died(self) -> EngineDeadError:
        self._proc.join(1.0)  # the sentinel fired or the pipe closed: the exit code is at hand
        error = EngineDeadError(self._kill_reason or
                                f"engine core process died ({describe_exit(self._proc.exitcode)})")
        self._fail_pending_calls(error)
        return error

    def _fail_pending_calls(self, error: EngineDeadError) -> None:
        for future in self._pending_calls.values():
            future.set_exception(error)
        self._pending_calls.clear()
        self._call_methods.clear()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the core to stop, then terminate (and finally kill) it if it does not."""
        from pagedllm.engine.core_ipc import EngineCoreRequestType

        if self._closing:
            return
        self._send(EngineCoreRequestType.SHUTDOWN, None)
        self._closing = True
        if timeout > 0:
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(2.0)
        self._frames.put(None)  # ends the feeder thread
        with contextlib.suppress(OSError):
            self._input_conn.close()
