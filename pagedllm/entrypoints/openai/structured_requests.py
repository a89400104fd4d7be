"""Request fields -> one StructuredOutputsParams (vLLM's request surface).

A constraint can come from `response_format` (json_object / json_schema), `structured_outputs`,
each legacy `guided_*` field, or a chat `tool_choice` (a named function constrains the output to
its parameters' schema, "required" to a JSON array of calls). A request may carry exactly one;
two are a 400 naming them, since silently preferring one would return output that does not
match what the client asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionToolsParam,
    NamedToolChoice,
    SamplingExtras,
    StructuredOutputsRequest,
)
from pagedllm.sampling_params import CONSTRAINT_KINDS, StructuredOutputsParams
from pagedllm.structured_output.validation import schema_object

_OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""The schema of a tool declared without parameters (vLLM's choice)."""


@dataclass
class _Constraint:
    source: str
    """Where it came from, as the client wrote it (named in the 400)."""
    kind: str
    """One of CONSTRAINT_KINDS."""
    value: Any


def structured_outputs_from_request(request: SamplingExtras) -> StructuredOutputsParams | None:
    """The request's one constraint (None if it has none); ValueError names a conflict or a
    malformed value (the caller answers 400)."""
    constraints = _collect(request)
    if not constraints:
        if request.structured_outputs is not None:
            raise ValueError(
                "structured_outputs needs one of json, regex, choice, grammar, json_object or "
                "structural_tag")
        return None
    if len(constraints) > 1:
        names = ", ".join(c.source for c in constraints)
        raise ValueError(f"a request may carry only one structured-output constraint; got {names}")
    constraint = constraints[0]
    return StructuredOutputsParams(**{constraint.kind: constraint.value}, **_options(request))


def _collect(request: SamplingExtras) -> list[_Constraint]:
    found: list[_Constraint] = []
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(_Constraint("response_format (json_object)", "json_object", True))
    elif fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None  # ResponseFormat's validator
        schema = fmt.json_schema.json_schema
        if schema is None:
            raise ValueError("response_format json_schema needs a 'schema' (a JSON schema object)")
        found.append(_Constraint("response_format (json_schema)", "json", schema))
    if request.structured_outputs is not None:
        found += _from_structured_outputs(request.structured_outputs)
    found += _from_guided(request)
    if isinstance(request, ChatCompletionRequest):
        tool = tool_choice_constraint(request)
        if tool is not None:
            found.append(tool)
    return found


def _from_structured_outputs(so: StructuredOutputsRequest) -> list[_Constraint]:
    values = {"json": so.json_schema, "regex": so.regex, "choice": so.choice,
              "grammar": so.grammar, "json_object": so.json_object,
              "structural_tag": so.structural_tag}
    found = []
    for kind in CONSTRAINT_KINDS:
        value = values[kind]
        if value is None or value is False:
            continue
        if kind == "json":
            value = schema_object(value, "structured_outputs.json")
        elif kind == "structural_tag" and isinstance(value, dict):
            value = json.dumps(value)
        found.append(_Constraint(f"structured_outputs.{kind}", kind, value))
    return found


def _from_guided(request: SamplingExtras) -> list[_Constraint]:
    found = []
    if request.guided_json is not None:
        found.append(_Constraint("guided_json", "json",
                                 schema_object(request.guided_json, "guided_json")))
    for field_name, kind in (("guided_regex", "regex"), ("guided_choice", "choice"),
                             ("guided_grammar", "grammar")):
        value = getattr(request, field_name)
        if value is not None:
            found.append(_Constraint(field_name, kind, value))
    return found


def _options(request: SamplingExtras) -> dict[str, Any]:
    options: dict[str, Any] = {}
    so = request.structured_outputs
    if so is not None:
        options = {name: getattr(so, name) for name in _OPTIONS}
    if request.guided_whitespace_pattern is not None:
        options["whitespace_pattern"] = request.guided_whitespace_pattern
    return options


# ---- tools ---------------------------------------------------------------------------------------


def tool_choice_constraint(request: ChatCompletionRequest) -> _Constraint | None:
    """The constraint a named or "required" tool_choice implies (None for auto/none)."""
    assert request.tools is not None or request.tool_choice == "none"
    if isinstance(request.tool_choice, NamedToolChoice):
        tool = named_tool(request)
        return _Constraint(f"tool_choice (function {tool.function.name!r})", "json",
                           tool.function.parameters or _EMPTY_PARAMETERS)
    if request.tool_choice == "required":
        schema = required_tools_schema(request.tools or [], bool(request.parallel_tool_calls))
        return _Constraint("tool_choice (required)", "json", schema)
    return None


def named_tool(request: ChatCompletionRequest) -> ChatCompletionToolsParam:
    assert isinstance(request.tool_choice, NamedToolChoice) and request.tools
    name = request.tool_choice.function.name
    return next(t for t in request.tools if t.function.name == name)


def required_tools_schema(tools: list[ChatCompletionToolsParam],
                          parallel_tool_calls: bool) -> dict[str, Any]:
    """A JSON array of at least one call `{"name": ..., "parameters": {...}}` of the given tools
    (vLLM's schema for tool_choice "required"); one call at most without parallel_tool_calls."""
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": [_call_schema(t) for t in tools]},
    }
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def _call_schema(tool: ChatCompletionToolsParam) -> dict[str, Any]:
    return {
        "properties": {
            "name": {"type": "string", "enum": [tool.function.name]},
            "parameters": tool.function.parameters or _EMPTY_PARAMETERS,
        },
        "required": ["name", "parameters"],
    }
