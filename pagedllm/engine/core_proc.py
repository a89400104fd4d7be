"""The engine core in its own process (the server's MPClient talks to it).

    parent (API server)                           child (this module)
    ───────────────────                           ───────────────────
    input_conn.send_bytes(("add", request)) ───▶ drain inputs ──▶ EngineCore.add_request/abort/...
                                                  step() while there is work
    output_conn.recv_bytes()  ◀───────────────── ("outputs" | "utility" | "heartbeat", ...)

Both pipes carry typed MessagePack frames (core_ipc.py), never pickle. The busy loop blocks on the
input pipe only when the core has nothing to do, so an idle server costs no CPU; while it waits it
sends a heartbeat every _HEARTBEAT_SECONDS, so the API process can tell a live idle loop from a
stopped one. Start-up (config, model load, KV cache allocation) happens here too; its outcome is
the first frame on the output pipe: `EngineReady` or `EngineStartupError`.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from multiprocessing import parent_process
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pagedllm.engine.core_ipc import (
    UTILITY_METHODS,
    EngineCoreRequestType,
    EngineReady,
    EngineStartupError,
    Heartbeat,
    UtilityOutput,
    config_for_the_wire,
    decode_input,
    encode_output,
)
from pagedllm.engine.messages import EngineCoreOutputs

if TYPE_CHECKING:
    from pagedllm.engine.arg_utils import EngineArgs
    from pagedllm.engine.core_base import EngineCoreBase

__all__ = ["EngineCoreProc", "EngineCoreRequestType", "EngineReady", "EngineStartupError",
           "UtilityOutput", "run_engine_core"]

HEARTBEAT_SECONDS = 0.5
"""While idle the core sends a heartbeat this often (and checks its parent and workers)."""


class EngineCoreProc:
    """Owns an EngineCoreBase and runs its busy loop against the IPC channels."""

    def __init__(self, core: EngineCoreBase, input_conn: Connection,
                 output_conn: Connection) -> None:
        self.core = core
        self.input_conn = input_conn
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
                self._send(self.core.step())
                self._stats_dirty = False

    def _send(self, message: Any) -> None:
        self.output_conn.send_bytes(encode_output(message))

    def _wait_for_input(self) -> bool:
        """Block until a message arrives, with a heartbeat every HEARTBEAT_SECONDS meanwhile;
        False if the parent process died."""
        while True:
            self._send(Heartbeat(time.time()))
            if self.input_conn.poll(HEARTBEAT_SECONDS):
                self._handle(*decode_input(self.input_conn.recv_bytes()))
                return True
            parent = parent_process()
            if parent is not None and not parent.is_alive():
                return False
            self.core.check_health()  # a dead worker rank ends the loop with its error

    def _drain_inputs(self) -> None:
        while not self._shutdown and self.input_conn.poll(0):
            self._handle(*decode_input(self.input_conn.recv_bytes()))

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
            self._send(UtilityOutput(call_id, error=f"unknown utility {method!r}"))
            return
        try:
            result = getattr(self, method)(*args)
        except Exception as e:  # reported to the caller, the loop goes on
            self._send(UtilityOutput(call_id, error=f"{type(e).__name__}: {e}"))
            return
        self._send(UtilityOutput(call_id, result=result))

    def _publish_idle_stats(self) -> None:
        if self._stats_dirty:
            self._send(EngineCoreOutputs(outputs=[], scheduler_stats=self.get_stats()))
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
    engine_args: EngineArgs, input_conn: Connection, output_conn: Connection
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
        output_conn.send_bytes(encode_output(EngineStartupError(message,
                                                                traceback.format_exc())))
        output_conn.close()
        return
    output_conn.send_bytes(encode_output(ready))
    proc = EngineCoreProc(core, input_conn, output_conn)
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
    from pagedllm.engine.lazy_hf_config import api_fields
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
    return core, EngineReady(config_for_the_wire(config), core.num_blocks, kv_bytes, os.getpid(),
                             api_fields(config.model.hf_config))
