"""Streamers for the forced tool choices, where a grammar fixes the text's shape.

- `tool_choice: {"type": "function", "function": {"name": N}}` -> `NamedToolCallStreamer(N)`:
  the whole text is the arguments JSON object.
- `tool_choice: "required"` -> `RequiredToolCallsStreamer()`: the text is a JSON array
  `[{"name": ..., "parameters": {...}}, ...]` (vLLM's shape; "arguments" also read).

They have the ToolParser methods (one instance per choice for streaming). Arguments come out in
canonical `json.dumps(..., ensure_ascii=False)` form, the streamed fragments concatenating to the
one-piece text for any chunking. Text that does not have the shape (a stream cut by max_tokens)
parses as content with tools_called False."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    CallObjectReader,
    MalformedToolCall,
    ScannerToolParser,
    ToolCallScanner,
    skip_ws,
)
from pagedllm.entrypoints.openai.tool_parsers.json_stream import JsonCanonicalizer


class _NamedScanner(ToolCallScanner):
    def __init__(self, name: str) -> None:
        super().__init__([])
        self._function_name = name
        self._json = JsonCanonicalizer(require_object=True)
        self._announced = False
        self._begin_call(0)

    def _on_scan(self) -> None:
        if not self._announced:  # the name is known before any text: it goes out first
            self._announced = True
            self._name(self._function_name)

    def _step(self, text: str) -> bool:
        if self._json.done:
            self.pos = skip_ws(text, self.pos)
            if self.pos < len(text):
                raise MalformedToolCall("text after the arguments object")
            return False
        try:
            out, self.pos = self._json.feed(text, self.pos)
        except ValueError as e:
            raise MalformedToolCall(str(e)) from e
        self._args(out)
        if self._json.done:
            self._end_call()
        return True

    def _finish(self, text: str) -> None:
        if not self._json.done:
            raise MalformedToolCall("unfinished arguments object")


class NamedToolCallStreamer(ScannerToolParser):
    """tool_choice names function `name`: the model's whole text is its arguments object."""

    def __init__(self, name: str, tokenizer: Any = None) -> None:
        super().__init__(tokenizer)
        self.name = name

    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return _NamedScanner(self.name)


class _RequiredScanner(ToolCallScanner):
    def __init__(self) -> None:
        super().__init__([])
        self._state = "open"  # open -> call -> after -> ... -> end
        self._reader: CallObjectReader | None = None

    def _step(self, text: str) -> bool:
        if self._state == "call":
            return self._step_call(text)
        self.pos = skip_ws(text, self.pos)
        if self.pos >= len(text):
            return False
        c = text[self.pos]
        if self._state == "open" and c == "[":
            self._state = "call"
        elif self._state == "after" and c in ",]":
            self._state = "call" if c == "," else "end"
        else:
            raise MalformedToolCall(f"unexpected {c!r} in the list of tool calls")
        self.pos += 1
        return True

    def _step_call(self, text: str) -> bool:
        if self._reader is None:
            self.pos = skip_ws(text, self.pos)
            if self.pos >= len(text):
                return False
            self._begin_call(self.pos if self.num_calls else 0)
            self._reader = CallObjectReader(self, arg_keys=("parameters", "arguments"))
        self.pos = self._reader.feed(text, self.pos)
        if not self._reader.done:
            return False
        self._reader = None
        self._end_call()
        self._state = "after"
        return True

    def _finish(self, text: str) -> None:
        if self._state != "end":
            raise MalformedToolCall("unfinished list of tool calls")


class RequiredToolCallsStreamer(ScannerToolParser):
    """tool_choice "required": the text is `[{"name": ..., "parameters": {...}}, ...]`."""

    def __init__(self, tokenizer: Any = None) -> None:
        super().__init__(tokenizer)

    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return _RequiredScanner()
