"""MultiprocExecutor: one worker process per rank on this machine (vLLM's "mp" backend).

    engine core process                       worker process, rank r (x world_size)
    ───────────────────                       ─────────────────────────────────────
    collective_rpc(method, args)              WorkerWrapper(Worker(config, r))
      encode once (msgpack, no pickle) ──────▶  recv_bytes ─▶ Worker.<method> ─▶ send_bytes
      wait for the answering ranks  ◀────────   (execute_model: rank 0 answers alone;
      or a dead rank's sentinel                  the ranks meet in their all-reduces)

Each rank joins torch.distributed over tcp://127.0.0.1 (gloo on CPU). A rank that dies (killed,
crashed, or failed a call it does not answer) is seen by its process sentinel while the executor
waits: the call raises WorkerDied and the engine core stops with that error. A worker whose
engine core dies sees its pipe close and exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from typing import Any

from pagedllm.executor.messages import decode_reply
from pagedllm.executor.remote import RemoteExecutor
from pagedllm.logger import init_logger
from pagedllm.utils.process_start import process_context, start_process

logger = init_logger(__name__)


class WorkerDied(RuntimeError):
    """A worker rank stopped: the engine cannot make progress."""


class MultiprocExecutor(RemoteExecutor):
    def _init_workers(self) -> None:
        world_size = self.config.parallel.world_size
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = process_context()
        self._send_pool: ThreadPoolExecutor | None = None
        self._sender_lock = threading.Lock()
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        with _may_have_children():
            for rank in range(world_size):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                proc = start_process(ctx, run_worker, (self.config, rank, init_method, child_conn),
                                     name=f"Worker_TP{rank}")  # fmt: skip
                child_conn.close()  # so the worker's recv() sees EOF when we go
                self._procs.append(proc)
                self._conns.append(parent_conn)
        logger.info("started %d worker processes (pids %s), meeting at %s", world_size,
                    [p.pid for p in self._procs], init_method)

    def _submit(self, method: str, data: bytes, reply_rank: int | None,
                timeout: float | None) -> Callable[[], list[Any]]:
        # NOTE: the bytes go out on one sender thread, in call order: with several steps in
        # flight, a large step written to a rank that is itself blocked writing a large reply
        # would otherwise deadlock with this thread, which reads the replies
        sent = self._sender().submit(self._broadcast, data)

        def collect() -> list[Any]:
            sent.result()  # (a dead rank's BrokenPipe becomes WorkerDied here)
            ranks = range(len(self._conns)) if reply_rank is None else [reply_rank]
            # every answer is read before an error is raised: none may be left in a pipe
            replies = [decode_reply(method, self._recv(rank, timeout)) for rank in ranks]
            errors = [error for error, _ in replies if error is not None]
            if errors:
                failure = RuntimeError(f"{method} failed on a worker: {errors[0]}")
                # A killed rank shows first as a collective error on a survivor ("connection
                # reset by peer"): name the dead rank, the cause, where there is one
                dead = self._dead_rank(grace=0.5)
                if dead is not None:
                    raise self._died(dead) from failure
                raise failure
            return [result for _, result in replies]

        return collect

    def _sender(self) -> ThreadPoolExecutor:
        with self._sender_lock:
            if self._send_pool is None:
                self._send_pool = ThreadPoolExecutor(1, thread_name_prefix="executor-send")
            return self._send_pool

    def _broadcast(self, data: bytes) -> None:
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(data)
            except (BrokenPipeError, OSError) as e:
                raise self._died(rank) from e

    def _recv(self, rank: int, timeout: float | None) -> bytes:
        """Rank `rank`'s reply; WorkerDied as soon as any rank's process is gone, or when no
        reply came within `timeout` seconds (None: no limit)."""
        conn = self._conns[rank]
        sentinels = {proc.sentinel: i for i, proc in enumerate(self._procs)}
        while True:
            ready = wait([conn, *sentinels], timeout)
            if not ready:
                raise WorkerDied(f"worker rank {rank} did not answer within {timeout:.0f} s "
                                 f"(PAGEDLLM_EXECUTE_MODEL_TIMEOUT_SECONDS)")
            if conn in ready:
                try:
                    return conn.recv_bytes()
                except (EOFError, OSError) as e:
                    raise self._died(rank) from e
            for sentinel in ready:
                raise self._died(sentinels[sentinel])  # type: ignore[index]

    def _died(self, rank: int) -> WorkerDied:
        proc = self._procs[rank]
        proc.join(0.5)
        return WorkerDied(f"worker rank {rank} (pid {proc.pid}) died"
                          f" (exit code {proc.exitcode})")

    def _dead_rank(self, grace: float) -> int | None:
        """The first rank whose process has exited, waiting up to `grace` seconds for one."""
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self._procs)}
        ready = wait(list(sentinels), grace)
        return min(sentinels[s] for s in ready) if ready else None  # type: ignore[index]

    def check_health(self) -> None:
        for rank, proc in enumerate(self._procs):
            if not proc.is_alive():
                raise self._died(rank)

    def shutdown(self) -> None:
        """Close the pipes (the workers exit on EOF), then terminate any that linger."""
        pool = getattr(self, "_send_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for conn in getattr(self, "_conns", []):
            conn.close()
        for proc in getattr(self, "_procs", []):
            proc.join(2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()


def run_worker(config: Any, rank: int, init_method: str, conn: Connection) -> None:
    """Entry point of a worker process: serve calls until the executor's pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine core decides when to stop
    from pagedllm.executor.worker_wrapper import WorkerFailed, WorkerWrapper

    wrapper = WorkerWrapper(config, rank, init_method)
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the engine core went away
            reply = wrapper.handle(data)
            if reply is not None:
                conn.send_bytes(reply)
    except WorkerFailed:
        os._exit(1)  # NOTE: no clean-up: peers may be blocked in a collective with us
    finally:
        with contextlib.suppress(Exception):
            wrapper.worker.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _may_have_children() -> Iterator[None]:
    """Let this process start worker processes although it may be a daemon (the server's
    engine core is one). NOTE: multiprocessing refuses children to daemons so that they are
    not orphaned; ours cannot be: each exits when its pipe to us closes, which the OS does
    however this process ends."""
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    had, daemon = "daemon" in config, config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if had:
            config["daemon"] = daemon
        else:
            del config["daemon"]
