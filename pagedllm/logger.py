"""One log format for the server and offline use."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"
_DATEFMT = "%m-%d %H:%M:%S"
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    from pagedllm import envs
    from pagedllm.log_redaction import install, register_secret

    install()  # every record of the process, whichever logger and format, is redacted
    register_secret(envs.api_key())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(envs.log_format()))
    root = logging.getLogger("pagedllm")
    root.addHandler(handler)

    root.setLevel(envs.log_level())
    root.propagate = False
    _configured = True


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pagedllm.log_format import JsonFormatter

        return JsonFormatter()
    return logging.Formatter(_FORMAT, _DATEFMT)


def set_log_format(log_format: str) -> None:
    """Switches the `pagedllm` loggers to "text" or "json", in this process and (through
    PAGEDLLM_LOG_FORMAT) in the processes it starts afterwards (the engine core)."""
    os.environ["PAGEDLLM_LOG_FORMAT"] = log_format
    _configure_root()
    for handler in logging.getLogger("pagedllm").handlers:
        handler.setFormatter(_formatter(log_format))


def init_logger(name: str) -> logging.Logger:
    _configure_root()
    return logging.getLogger(name)
