"""The engine core in its own process (the server's MPClient talks to it).

    parent (API server)                         child (this module)
    ───────────────────                         ───────────────────
    input_queue.put((ADD, EngineCoreRequest)) ─▶ drain inputs ──▶ EngineCore.add_request/abort/...
                                                  step() while there is work
    output_conn.recv()  ◀────────────────────── send(EngineCoreOutputs | UtilityOutput)

The busy loop blocks on the input queue only when the core has nothing to do, so an idle server
costs no CPU. Start-up (config, model load, KV cache allocation) happens here too; its outcome is
the first message on the output pipe: `EngineReady` or `EngineStartupError`.
"""

from __future__ import annotations

import enum
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing import parent_process
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pagedllm.engine.messages import EngineCoreOutputs

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from pagedllm.config import EngineConfig
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.core_base import EngineCoreBase


class EngineCoreRequestType(enum.Enum):
    ADD = "add"
    """payload: EngineCoreRequest"""
    ABORT = "abort"
    """payload: list of request ids"""
    FINISH_STOPPED = "finish_stopped"
    """payload: list of request ids a stop string ended"""
    UTILITY = "utility"
    """payload: (call_id, method name, args)"""
    SHUTDOWN = "shutdown"
    """payload: None"""


@dataclass
class EngineReady:
    config: EngineConfig
    num_kv_blocks: int
    kv_cache_bytes: int | None
    pid: int


@dataclass
class EngineStartupError:
    message: str
    traceback: str


@dataclass
class UtilityOutput:
    call_id: int
    result: Any = None
    error: str | None = None


# Methods of EngineCoreProc a client may call through UTILITY requests.
UTILITY_METHODS = frozenset({"get_stats", "reset_prefix_cache", "remove_lora"})

_PARENT_CHECK_SECONDS = 1.0


class EngineCoreProc:
    """Owns an EngineCoreBase and runs its busy loop against the IPC channels."""

    def __init__(self, core: EngineCoreBase, input_queue: Queue, output_conn: Connection) -> None:
        self.core = core
        self.input_queue = input_queue
        self.output_conn = output_conn
        self._shutdown = False
        self._stats_dirty = False
        """Requests were finished outside a step: publish fresh stats once idle."""

    def run_busy_loop(self) -> None:
        while not self._shutdown:
            if not self.core.has_unfinished_requests():
                self._publish_idle_stats()
                if not self._wait_for_input():
                    return
            self._drain_inputs()
            if self._shutdown:
                return
            if self.core.has_unfinished_requests():
                self.output_conn.send(self.core.step())
                self._stats_dirty = False

    def _wait_for_input(self) -> bool:
        """Block until a message arrives; False if the parent process died meanwhile."""
        while True:
            try:
                message = self.input_queue.get(timeout=_PARENT_CHECK_SECONDS)
            except queue.Empty:
                parent = parent_process()
                if parent is not None and not parent.is_alive():
                    return False
                self.core.check_health()  # a dead worker rank ends the loop with its error
                continue
            self._handle(*message)
            return True

    def _drain_inputs(self) -> None:
        while not self._shutdown:
            try:
                message = self.input_queue.get_nowait()
            except queue.Empty:
                return
            self._handle(*message)

    def _handle(self, kind: EngineCoreRequestType, payload: Any) -> None:
        if kind == EngineCoreRequestType.ADD:
            self.core.add_request(payload)
        elif kind == EngineCoreRequestType.ABORT:
            self.core.abort_requests(payload)
            self._stats_dirty = True
        elif kind == EngineCoreRequestType.FINISH_STOPPED:
            self.core.finish_requests_stopped(payload)
            self._stats_dirty = True
        elif kind == EngineCoreRequestType.UTILITY:
            self._call_utility(*payload)
        elif kind == EngineCoreRequestType.SHUTDOWN:
            self._shutdown = True
        else:
            raise ValueError(f"unknown engine core request type {kind!r}")

    def _call_utility(self, call_id: int, method: str, args: tuple) -> None:
        if method not in UTILITY_METHODS:
            self.output_conn.send(UtilityOutput(call_id, error=f"unknown utility {method!r}"))
            return
        try:
            result = getattr(self, method)(*args)
        except Exception as e:  # reported to the caller, the loop goes on
            self.output_conn.send(UtilityOutput(call_id, error=f"{type(e).__name__}: {e}"))
            return
        self.output_conn.send(UtilityOutput(call_id, result=result))

    def _publish_idle_stats(self) -> None:
        if self._stats_dirty:
            self.output_conn.send(EngineCoreOutputs(outputs=[], scheduler_stats=self.get_stats()))
            self._stats_dirty = False

    # ---- utilities ----------------------------------------------------------------------------

    def get_stats(self) -> Any:
        # NOTE: the scheduler's stats record; counters in it (preemptions, tokens) cover the time
        # since the previous record, which is empty when no step ran in between.
        return self.core.make_stats()

    def reset_prefix_cache(self) -> bool:
        return self.core.reset_prefix_cache()

    def remove_lora(self, lora_id: int) -> bool:
        return self.core.remove_lora(lora_id)  # type: ignore[attr-defined]


def run_engine_core(
    engine_args: EngineArgs, input_queue: Queue, output_conn: Connection
) -> None:
    """Entry point of the engine-core process (multiprocessing spawn target)."""
    # Ctrl-C reaches the whole process group; the parent decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pagedllm.logger import init_logger

    logger = init_logger("pagedllm.engine.core_proc")
    try:
        core, ready = _start_core(engine_args)
    except BaseException as e:  # every start-up failure goes back to the parent
        message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        output_conn.send(EngineStartupError(message, traceback.format_exc()))
        output_conn.close()
        return
    output_conn.send(ready)
    proc = EngineCoreProc(core, input_queue, output_conn)
    try:
        proc.run_busy_loop()
    except (BrokenPipeError, EOFError):
        pass  # the parent went away
    except BaseException:
        logger.exception("engine core died")
        raise
    finally:
        logger.info("engine core process %d exiting", os.getpid())


def _start_core(engine_args: EngineArgs) -> tuple[EngineCoreBase, EngineReady]:
    from pagedllm.engine.core_factory import make_engine_core
    from pagedllm.logger import init_logger

    logger = init_logger("pagedllm.engine.core_proc")
    start = time.perf_counter()
    config = engine_args.create_engine_config()
    logger.info(
        "engine core (pid %d): model %s (%s, %s, max_model_len %d) on %s",
        os.getpid(), config.model.model, config.model.architecture, config.model.dtype,
        config.model.max_model_len, config.device.device,
    )
    core = make_engine_core(config)
    kv_bytes = core.kv_cache_bytes
    logger.info("engine core ready in %.1f s: %d KV blocks of %d tokens",
                time.perf_counter() - start, core.num_blocks, config.cache.block_size)
    return core, EngineReady(config, core.num_blocks, kv_bytes, os.getpid())
