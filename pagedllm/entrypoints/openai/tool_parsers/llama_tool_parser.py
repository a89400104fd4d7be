"""Llama 3.x JSON tool calls: the output is `{"name": ..., "parameters": {...}}` (or
"arguments"), optionally after `<|python_tag|>`, several separated by `;`. An output that starts
with anything else is content, up to a `<|python_tag|>` after which calls follow.

NOTE: `<|python_tag|>` is a special token: it reaches the parser only when the server detokenizes
with skip_special_tokens=False; skipped, the output starts with `{` and still parses."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    CallObjectReader,
    MalformedToolCall,
    ScannerToolParser,
    StateScanner,
    ToolCallScanner,
    match_marker,
    skip_ws,
)

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonScanner(StateScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "start"  # start | content | expect_call | call | after_call
        self._reader: CallObjectReader | None = None

    def _step_start(self, text: str) -> bool:
        """Leading whitespace is held until the first character says call or content."""
        first = skip_ws(text, self.pos)
        if first >= len(text):
            return False
        tag = match_marker(text, first, PYTHON_TAG)
        if tag is None:
            return False
        if tag or text[first] == "{":
            self._begin_call(0)  # a failed first call gives the whole text back as content
        if tag:
            self.pos = first + len(PYTHON_TAG)
            self._state = "expect_call"
        elif text[first] == "{":
            self.pos = first
            self._state = "expect_call"
        else:
            self._state = "content"
        return True

    def _step_content(self, text: str) -> bool:
        found = self._content_until(text, PYTHON_TAG)
        if found is None:
            return False
        self._begin_call(found)
        self.pos = found + len(PYTHON_TAG)
        self._state = "expect_call"
        return True

    def _step_expect_call(self, text: str) -> bool:
        first = self._next_char(text)
        if first is None:
            return False
        if first != "{":
            raise MalformedToolCall("expected a JSON tool call object")
        if self.num_calls > 0:
            self._begin_call(self.pos)
        self._reader = CallObjectReader(self)
        self._state = "call"
        return True

    def _step_call(self, text: str) -> bool:
        assert self._reader is not None
        return self._read_call(text, self._reader, "after_call")

    def _step_after_call(self, text: str) -> bool:
        following = self._next_char(text)
        if following is None:
            return False
        if following != ";":
            raise MalformedToolCall("expected ';' between tool calls")
        self.pos += 1
        self._state = "expect_call"
        return True

    def _finish(self, text: str) -> None:
        if self._state in ("start", "content"):
            self._rest_is_content(text)
        elif self._state == "call":
            raise MalformedToolCall("unfinished tool call")


class Llama3JsonToolParser(ScannerToolParser):
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return Llama3JsonScanner(tools)
