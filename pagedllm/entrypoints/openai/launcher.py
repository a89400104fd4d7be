"""Run an app under uvicorn until SIGINT/SIGTERM; exit code 0 after a graceful shutdown, 1 if the
engine could not start."""

from __future__ import annotations

import asyncio
import signal
import socket

import uvicorn
from fastapi import FastAPI

from pagedllm.logger import init_logger

logger = init_logger(__name__)


def serve_http(app: FastAPI, host: str, port: int, log_level: str = "info",
               graceful_shutdown_timeout: float = 10.0, access_log: bool = False,
               log_format: str = "text") -> int:
    # uvicorn cancels what is still running after its timeout; ours ends requests cleanly first.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_shutdown_timeout + 5.0,
                            access_log=access_log,
                            **_log_config(log_format))
    server = _Server(config, graceful_shutdown_timeout)
    exit_code = 0

    def on_fatal(message: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    app.state.server.on_fatal = on_fatal
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with these
    # handlers in place that is a no-op and the process exits with our code instead of dying of it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    logger.info("starting the API server on http://%s:%d", host, port)
    server.run()
    if server.started is False and exit_code == 0:
        exit_code = 1  # could not bind the port (uvicorn logged why)
    return exit_code


def _log_config(log_format: str) -> dict:
    from pagedllm.log_format import uvicorn_log_config

    config = uvicorn_log_config(log_format)
    return {} if config is None else {"log_config": config}


class _Server(uvicorn.Server):
    """uvicorn's server that, once shutting down, lets in-flight requests run for the graceful
    period and then aborts them through the engine (clients get an error event, not a cut)."""

    def __init__(self, config: uvicorn.Config, graceful_timeout: float) -> None:
        super().__init__(config)
        self.graceful_timeout = graceful_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.config.app.state.server  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.graceful_timeout, state.abort_all)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()
