"""JsonFormatter: a line logged about one engine request carries that request's id (the engine
core has no HTTP request in context); otherwise the id of the HTTP request being served."""

from __future__ import annotations

import json
import logging

from pagedllm.log_format import REQUEST_ID, JsonFormatter


def _line(extra: dict | None = None) -> dict:
    record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "request %s: %s",
                                               ("r1", "bad"), None, extra=extra)
    return json.loads(JsonFormatter().format(record))


def test_engine_request_id_and_http_request_id():
    assert "request_id" not in _line()
    assert _line({"request_id": "cmpl-7"})["request_id"] == "cmpl-7"
    token = REQUEST_ID.set("http-1")
    try:
        assert _line()["request_id"] == "http-1"
        assert _line({"request_id": "cmpl-7"})["request_id"] == "cmpl-7"
    finally:
        REQUEST_ID.reset(token)
    assert _line()["message"] == "request r1: bad" and _line()["level"] == "ERROR"
