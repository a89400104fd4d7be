"""Structured logs (`pagedllm serve --log-format json`): one JSON object per line, carrying the
id of the HTTP request being served when there is one.

The request id lives in a ContextVar set by the server's RequestIdMiddleware: everything logged
while a request is handled (our loggers, and uvicorn's access line, which uvicorn emits from
inside the app's send) is in that request's context."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("pagedllm_request_id", default=None)
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", "process"[, "request_id"][, "exc_info"]}."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        # A log line about one engine request names it (`extra={"request_id": ...}`, e.g. from
        # the engine core, where no HTTP request is in context); else the HTTP request's id.
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:  # exc_text: set when log_redaction had to redact the traceback
            entry["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's `log_config` for a format; None keeps uvicorn's own (text) config."""
    if log_format != "json":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "loggers": {name: {"handlers": ["default"], "level": "INFO", "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
