"""A real `pagedllm serve` subprocess on a free port (tiny random Llama), killed in any case."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import pytest

API_KEY = "test-key-123"
MODEL_NAME = "tiny"
MAX_BODY_BYTES = 1_000_000
STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RemoteServer:
    proc: subprocess.Popen
    port: int
    log_path: str
    statuses_while_loading: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def engine_pid(self) -> int:
        match = re.search(r"engine core pid (\d+)", self.log())
        assert match, self.log()
        return int(match.group(1))

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(model: str, log_path: str, *extra: str, wait: bool = True) -> RemoteServer:
    """Start `pagedllm serve`; with wait, kill it again if it does not become healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "pagedllm.entrypoints.cli.main", "serve", model,
           "--port", str(port), *extra]
    env = {**os.environ, "PAGEDLLM_NUM_THREADS": "1"}
    log = open(log_path, "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    server = RemoteServer(proc, port, log_path)
    if wait:
        try:
            _wait_healthy(server)
        except BaseException:
            server.stop()
            raise
    return server


def serve_module(model: str, tmp_path_factory, name: str, *extra: str):
    """For a module-scoped fixture: `yield from serve_module(...)` runs a server for the
    module and stops it afterwards."""
    log = tmp_path_factory.mktemp(name) / "server.log"
    remote = start_server(model, str(log), *extra)
    try:
        yield remote
    finally:
        remote.stop()


def _wait_healthy(server: RemoteServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited ({server.proc.returncode}):\n{server.log()}")
        try:
            status = httpx.get(f"{server.url}/health", timeout=2).status_code
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if status == 200:
            return
        if "health" not in server.statuses_while_loading:
            server.statuses_while_loading["health"] = status
            server.statuses_while_loading["models"] = httpx.get(
                f"{server.url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=2).status_code
        time.sleep(0.2)
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT} s:\n{server.log()}")


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    remote = start_server(
        tiny_llama_dir, log_path,
        "--api-key", API_KEY, "--served-model-name", MODEL_NAME, "other-name",
        "--kv-cache-memory", "16MiB", "--max-request-body-bytes", str(MAX_BODY_BYTES),
        "--allowed-origins", "http://example.com", "--max-num-seqs", "64", wait=False,
    )
    try:
        _wait_healthy(remote)
        yield remote
    finally:
        remote.stop()
