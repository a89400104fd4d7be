"""Qwen3-Coder tool calls, XML-like:

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Parameter values are text; each is converted with the type the request's tool schema gives it
(integer, number, boolean, object/array as JSON, else the string), and the arguments are the JSON
object of them. Text before the first `<tool_call>` is content; text between calls is dropped.
Streaming: the name at `<function=...>`, then `{`, each parameter as it closes, `}`."""

from __future__ import annotations

import json
import math
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    MAX_NAME_CHARS,
    MalformedToolCall,
    ScannerToolParser,
    StateScanner,
    ToolCallScanner,
)

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
FUNCTION_START, FUNCTION_END = "<function=", "</function>"
PARAM_START, PARAM_END = "<parameter=", "</parameter>"


def _schema_types(tools: list[dict[str, Any]], func: str, param: str) -> set[str]:
    """The JSON-schema types the request declares for func's param (empty: unknown)."""
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        if not isinstance(fn, dict) or fn.get("name") != func:
            continue
        props = (fn.get("parameters") or {}).get("properties") or {}
        schema = props.get(param) if isinstance(props, dict) else None
        if not isinstance(schema, dict):
            return set()
        types = schema.get("type")
        options = [schema] + [s for key in ("anyOf", "oneOf") for s in schema.get(key) or []
                              if isinstance(s, dict)]
        found = {types} if isinstance(types, str) else set(types or [])
        found |= {s["type"] for s in options[1:] if isinstance(s.get("type"), str)}
        return found
    return set()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """json.loads without NaN/Infinity (they would make the arguments invalid JSON)."""
    return json.loads(text, parse_constant=_reject_constant)


def _as_number(value: str, integer: bool) -> int | float | None:
    try:
        number = _loads(value)
    except ValueError:
        return None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    if isinstance(number, float) and number.is_integer() and (integer or "." not in value):
        return int(number)
    return None if integer and isinstance(number, float) else number


def convert_param_value(value: str, types: set[str]) -> Any:
    """A parameter's text as the value its schema types ask for; the text itself otherwise."""
    text = value.strip()
    if text.lower() == "null" and types != {"string"}:
        return None
    for kind in ("integer", "number"):
        if kind in types and (number := _as_number(text, kind == "integer")) is not None:
            return number
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if types & {"object", "array"}:
        try:
            return _loads(text)
        except ValueError:
            pass
    return value


class Qwen3CoderScanner(StateScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "content"
        self._scan = 0  # where the next search for a closing marker starts
        self._mark = 0  # start of the name or value being read
        self._func = ""
        self._param = ""
        self._num_params = 0

    def _find_start(self, text: str, state_if_found: str, emit: bool) -> bool:
        found = self._content_until(text, TOOL_CALL_START, emit)
        if found is None:
            return False
        self._begin_call(found)
        self.pos = found + len(TOOL_CALL_START)
        self._state = state_if_found
        return True

    def _step_content(self, text: str) -> bool:
        return self._find_start(text, "open", emit=True)

    def _step_between(self, text: str) -> bool:
        return self._find_start(text, "open", emit=False)

    def _read_until(self, text: str, marker: str, limit: int | None) -> str | None:
        """Text from self._mark up to marker (consumed), or None while it has not arrived."""
        found = text.find(marker, max(self._scan, self._mark))
        if found < 0:
            self._scan = max(self._mark, len(text) - len(marker) + 1)
            if limit is not None and len(text) - self._mark > limit:
                raise MalformedToolCall(f"no {marker} within {limit} characters")
            return None
        self.pos = found + len(marker)
        return text[self._mark:found]

    def _step_open(self, text: str) -> bool:
        if self._expect(text, FUNCTION_START) is None:
            return False
        self._mark, self._state = self.pos, "fname"
        return True

    def _step_fname(self, text: str) -> bool:
        name = self._read_until(text, ">", MAX_NAME_CHARS)
        if name is None:
            return False
        if not name.strip():
            raise MalformedToolCall("empty function name")
        self._func = name.strip()
        self._name(self._func)
        self._args("{")
        self._num_params = 0
        self._state = "params"
        return True

    def _step_params(self, text: str) -> bool:
        marker = self._expect(text, PARAM_START, FUNCTION_END)
        if marker is None:
            return False
        if marker == FUNCTION_END:
            self._args("}")
            self._end_call()
            self._state = "close"
        else:
            self._mark, self._state = self.pos, "pname"
        return True

    def _step_pname(self, text: str) -> bool:
        name = self._read_until(text, ">", MAX_NAME_CHARS)
        if name is None:
            return False
        self._param = name.strip()
        self._mark, self._state = self.pos, "pvalue"
        return True

    def _step_pvalue(self, text: str) -> bool:
        value = self._read_until(text, PARAM_END, None)
        if value is None:
            return False
        # The value sits on its own lines: one newline each side belongs to the markup.
        value = value[1:] if value.startswith("\n") else value
        value = value[:-1] if value.endswith("\n") else value
        converted = convert_param_value(value, _schema_types(self.tools, self._func, self._param))
        sep = ", " if self._num_params else ""
        self._args(f"{sep}{json.dumps(self._param, ensure_ascii=False)}: "
                   f"{json.dumps(converted, ensure_ascii=False)}")
        self._num_params += 1
        self._state = "params"
        return True

    def _step_close(self, text: str) -> bool:
        if self._expect(text, TOOL_CALL_END) is None:
            return False
        self._state = "between"
        return True

    def _finish(self, text: str) -> None:
        if self._state == "content":
            self._rest_is_content(text)
        elif self._state not in ("between", "close"):
            raise MalformedToolCall("unfinished tool call")


class Qwen3CoderToolParser(ScannerToolParser):
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return Qwen3CoderScanner(tools)
