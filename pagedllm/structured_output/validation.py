"""Checks of a request's constraint before it reaches the engine (the API process runs them, so
a bad schema, regex or grammar is a 400 with the reason and never reaches the step loop)."""

from __future__ import annotations

import json
import re
from typing import Any

from pagedllm.config.structured_outputs import StructuredOutputsConfig
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.backend import constraint_key

# xgrammar's errors start with "[time] /path/file.cc:line: "; the rest is the reason.
_XGRAMMAR_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


def validate_structured_outputs(params: StructuredOutputsParams,
                                config: StructuredOutputsConfig) -> None:
    """Raise ValueError naming what is wrong with the constraint."""
    kind = params.kind
    if params.whitespace_pattern is not None:
        raise ValueError(
            "structured outputs 'whitespace_pattern' is not supported by the xgrammar backend; "
            "use 'disable_any_whitespace' for compact JSON")
    if kind == "json":
        schema = schema_object(params.json)
        depth = _depth(schema)
        if depth > config.max_json_schema_depth:
            raise ValueError(
                f"the JSON schema is nested {depth} levels deep; the limit is "
                f"{config.max_json_schema_depth}")
    elif kind == "regex":
        _check_length("regex", params.regex, config.max_regex_length)
    elif kind == "grammar":
        _check_length("grammar", params.grammar, config.max_grammar_length)
    elif kind == "structural_tag":
        _check_length("structural_tag", params.structural_tag, config.max_grammar_length)
    elif kind == "choice":
        _check_length("choice", "".join(params.choice or []), config.max_grammar_length)
    from pagedllm.structured_output.xgrammar_backend import build_grammar

    try:
        build_grammar(constraint_key(params, config.disable_any_whitespace))
    except (RuntimeError, ValueError, TypeError) as e:
        reason = _XGRAMMAR_PREFIX.sub("", str(e).strip().splitlines()[0] if str(e).strip()
                                      else type(e).__name__)
        raise ValueError(f"invalid structured outputs {kind}: {reason}") from e


def schema_object(value: Any, name: str = "the JSON schema") -> dict[str, Any]:
    """A JSON schema given as an object or its JSON text -> the object; ValueError naming
    `name` when it is neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON schema object, got {type(value).__name__}")
    return value


def _check_length(name: str, text: str | None, limit: int) -> None:
    if not isinstance(text, str):
        raise ValueError(f"structured outputs {name!r} must be a string")
    if len(text) > limit:
        raise ValueError(
            f"structured outputs {name!r} is {len(text)} characters long; the limit is {limit}")


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers, without recursion (a hostile schema can be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node)
    return deepest
