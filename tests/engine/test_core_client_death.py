"""MPClient notices a dead engine-core process from its sentinel, not only from the pipe's EOF: a
child of the core (a worker rank) holding the pipe's write end must not hide the death. No model:
the "core" is a stand-in process that sends one message, forks a sleeper and is SIGKILLed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from pagedllm.engine.core_client import EngineDeadError, MPClient, describe_exit


def _core_with_grandchild(conn) -> None:
    grandchild = os.fork()
    if grandchild == 0:  # it inherits the write end and outlives its parent
        time.sleep(30)
        os._exit(0)
    from pagedllm.core.sched.output import EngineCoreOutput
    from pagedllm.engine.core_ipc import encode_output
    from pagedllm.engine.messages import EngineCoreOutputs

    # last words (the grandchild's pid as a request id): read after the death all the same
    conn.send_bytes(encode_output(EngineCoreOutputs([EngineCoreOutput(str(grandchild), [])])))
    os.kill(os.getpid(), signal.SIGKILL)


def _client_around(proc, conn) -> MPClient:
    client = object.__new__(MPClient)  # only what get_output() and call_utility() touch
    client._proc = proc
    client._output_conn = conn
    client._pending_calls = {}
    client._call_methods = {}
    client._closing = False
    client._kill_reason = None
    return client


def test_death_seen_although_a_grandchild_holds_the_pipe():
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_core_with_grandchild, args=(writer,), daemon=True)
    proc.start()
    writer.close()
    client = _client_around(proc, reader)
    grandchild = int(client.get_output().outputs[0].request_id)
    try:
        start = time.monotonic()
        with pytest.raises(EngineDeadError, match="killed by SIGKILL"):
            client.get_output()
        assert time.monotonic() - start < 5.0
        assert reader.poll(0) is False  # no EOF: the grandchild still holds the write end
    finally:
        os.kill(grandchild, signal.SIGKILL)
    # a utility call on a dead core fails at once instead of waiting for a reader forever
    with pytest.raises(EngineDeadError):
        client.call_utility("get_stats").result(timeout=1)


def test_describe_exit():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9).startswith("killed by SIGKILL")
    assert describe_exit(-15) == "killed by SIGTERM"


def test_kill_gives_its_reason_to_the_reader():
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=time.sleep, args=(30,), daemon=True)
    proc.start()
    client = _client_around(proc, reader)
    client.kill("made no progress for 3 s")
    with pytest.raises(EngineDeadError, match="^made no progress for 3 s$"):
        client.get_output()
    writer.close()
