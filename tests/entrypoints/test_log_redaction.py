"""Secret redaction in logs (pagedllm/log_redaction.py): registered keys and credential-looking
values never reach a formatted line, whichever logger made the record and in text or JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pagedllm.log_format import JsonFormatter
from pagedllm.log_redaction import REDACTED, redact, redact_argv, register_secret

SECRET = "sk-registered-5f1c2b9e"
UNKNOWN = "sk-never-registered-77aa"


@pytest.fixture(autouse=True)
def _registered():
    register_secret(SECRET)


@pytest.mark.parametrize("text", [
    f"key {SECRET} in the middle",
    f"Authorization: Bearer {UNKNOWN}",
    f"authorization: {UNKNOWN}",
    f"[(b'host', b'x'), (b'authorization', b'Bearer {UNKNOWN}')]",
    f"[(b'x-api-key', b'{UNKNOWN}')]",
    f'{{"api_key": "{UNKNOWN}", "model": "m"}}',
    f"GET /v1/models?api_key={UNKNOWN}&x=1",
    f"curl -H 'Authorization: Basic {UNKNOWN}'",
])
def test_redact_hides_secrets(text):
    clean = redact(text)
    assert SECRET not in clean and UNKNOWN not in clean, clean
    assert REDACTED in clean


@pytest.mark.parametrize("text", [
    "the key is ready", "api keys file loaded: 3 keys", "tokens 1 2 3", "authorization failed",
])
def test_redact_leaves_ordinary_text(text):
    assert redact(text) == text


def test_redact_argv():
    argv = ["serve", "m", "--api-key", SECRET, "--port", "8000", f"--api-key={UNKNOWN}",
            "--api-keys-file", "/etc/keys.yaml"]
    assert redact_argv(argv) == ["serve", "m", "--api-key", REDACTED, "--port", "8000",
                                 f"--api-key={REDACTED}", "--api-keys-file", "/etc/keys.yaml"]


@pytest.mark.parametrize("formatter", [logging.Formatter("%(message)s"), JsonFormatter()])
def test_records_of_any_logger_are_redacted(formatter):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    foreign = logging.getLogger("some.library.not.ours")
    foreign.addHandler(handler)
    foreign.setLevel(logging.INFO)
    try:
        foreign.info("headers: %s", [(b"authorization", f"Bearer {UNKNOWN}".encode())])
        foreign.info("Authorization: %s", UNKNOWN)  # name in the template, value in an argument
        foreign.info("starting with %s, %d workers", {"api_key": SECRET}, 4)
        try:
            raise ValueError(f"bad key {SECRET}")
        except ValueError:
            foreign.exception("request failed")
    finally:
        foreign.removeHandler(handler)
    output = stream.getvalue()
    assert SECRET not in output and UNKNOWN not in output, output
    assert "4 workers" in output and "ValueError: bad key ***" in output
    if isinstance(formatter, JsonFormatter):
        assert all(json.loads(line)["message"] for line in output.splitlines())


def test_uvicorn_access_records_keep_their_arguments():
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/v1/models?api_key={SECRET}", "1.1", 200), None)
    assert isinstance(record.args, tuple) and len(record.args) == 5  # uvicorn unpacks them
    assert SECRET not in record.getMessage() and record.args[4] == 200
