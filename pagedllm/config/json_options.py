"""JSON options of a config dataclass (vLLM's `--speculative-config '{...}'` style flags)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any


def json_options(cls: type, value: str | dict[str, Any], flag: str, kind: str,
                 internal: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields a flag's JSON text (or a dict) sets; ValueError for text that is not a JSON
    object and for names that are not fields of `cls` (`internal` fields are not the user's)."""
    data = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{flag} must be a JSON object")
    known = {f.name for f in fields(cls)} - internal
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {kind} option(s) {unknown}; known: {sorted(known)}")
    return dict(data)
