"""A killed rank is reported as the cause even when a survivor's collective fails first.

When rank 1 is SIGKILLed mid-step, rank 0's all-reduce fails with gloo's "connection reset by
peer" and that error reply can reach the executor before rank 1's process sentinel does. The
engine core's error (and the server log) must name the dead rank, not the survivor's symptom.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from pagedllm.executor.messages import encode_reply
from pagedllm.executor.multiproc_executor import MultiprocExecutor, WorkerDied


def _survivor(conn) -> None:
    conn.recv_bytes()
    time.sleep(0.2)  # the peer is gone by now: its socket reset our collective
    conn.send_bytes(encode_reply(error="RuntimeError: gloo pair.cc: Connection reset by peer"))
    conn.recv_bytes()  # wait for the executor to go


def _killed(conn) -> None:
    os._exit(9)


def _survivor_alone(conn) -> None:
    conn.recv_bytes()
    conn.send_bytes(encode_reply(error="ValueError: a bad step"))
    conn.recv_bytes()


def _executor(targets) -> MultiprocExecutor:
    ctx = multiprocessing.get_context("fork")
    executor = object.__new__(MultiprocExecutor)
    executor._send_pool = None
    executor._sender_lock = __import__("threading").Lock()
    executor._procs, executor._conns = [], []
    for target in targets:
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=target, args=(child,), daemon=True)
        proc.start()
        child.close()
        executor._procs.append(proc)
        executor._conns.append(parent)
    return executor


def test_survivor_error_names_the_dead_rank() -> None:
    executor = _executor([_survivor, _killed])
    try:
        executor._procs[1].join(5)
        with pytest.raises(WorkerDied, match=r"worker rank 1 \(pid \d+\) died \(exit code 9\)"):
            executor._conns[0].send_bytes(b"step")
            collect = executor._submit("execute_model", b"", reply_rank=0, timeout=10)
            collect()
    finally:
        executor.shutdown()


def test_worker_error_without_a_death_stays_the_worker_error() -> None:
    executor = _executor([_survivor_alone])
    try:
        with pytest.raises(RuntimeError, match="failed on a worker: ValueError: a bad step"):
            executor._submit("execute_model", b"step", reply_rank=0, timeout=10)()
    finally:
        executor.shutdown()
