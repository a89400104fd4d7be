"""Secrets never reach a log line: API keys and credential headers are redacted from every log
record of the process, whatever logger made it (ours, uvicorn's, a library's) and whatever the
format (text or `--log-format json`).

Two nets, both applied when a record is created (a LogRecord factory, so no handler or format can
miss it):
- the literal secrets the server knows (`--api-key`, the keys of `--api-keys-file`,
  `PAGEDLLM_API_KEY`), registered with `register_secret`;
- patterns for credentials it does not know, such as a wrong key a client sent: `Bearer <token>`,
  `authorization` / `x-api-key` / `api_key` followed by a value (in headers, reprs, JSON).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "***"
_MIN_SECRET_CHARS = 4
"""Shorter registered secrets are not searched for (they would blank out ordinary words)."""
_SECRET_FLAGS = ("--api-key",)
"""Command-line flags whose value is a secret (redact_argv)."""

_VALUE = r"""[^\s"',;)\]}]+"""
_PATTERNS = (
    # "Bearer sk-..." anywhere (headers, curl lines, reprs of header lists)
    re.compile(r"(?i)(\bbearer\s+)" + _VALUE),
    # a credential's name, a separator (": ", "=", "', b'", '": "'), then its value
    # (not when the value is already redacted, or is a %-placeholder of a log template)
    re.compile(r"""(?i)(\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key)(["']?\s*[:=,]\s*"""
               r"""(?!\s*(?-i:b)?["']?\s*(?:\*\*\*|%[sdr(]))(?-i:b)?["']?\s*)"""
               r"""(?:(?:basic|bearer|token)\s+)?""" + _VALUE),
)

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(value: str | None) -> None:
    """Never log `value` (an API key) from now on."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            _secrets.add(value)
    install()


def redact(text: str) -> str:
    """`text` with every registered secret and every credential-looking value replaced."""
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: m.group(1) + REDACTED, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line fit for a log: the values of secret flags replaced."""
    out: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif token in _SECRET_FLAGS:
            out.append(token)
            hide_next = True
        elif token.split("=", 1)[0] in _SECRET_FLAGS and "=" in token:
            out.append(token.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(token)
    return out


def install() -> None:
    """Redact every LogRecord this process creates from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            redact_record(record)
        except Exception:  # redaction must never cost a log line
            pass
        return record

    logging.setLogRecordFactory(factory)


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message template and arguments one by one (formatters such as
    uvicorn's access log read the arguments), then, if the whole message still shows a credential
    (a header name in the template, its value in an argument), the message as a whole."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {k: _redact_arg(v) for k, v in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(a) for a in record.args)
    if record.args and record.name != "uvicorn.access":
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_text = clean  # formatters print exc_text when it is set


def _redact_arg(value: Any) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value  # nothing secret in a number; keeps %d and %f working
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    clean = redact(text)
    return value if clean == text else clean
