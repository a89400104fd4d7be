"""Hermes / Qwen2.5 tool calls: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
one block per call. The text before the first block is the content; text between or after the
blocks is dropped (as vLLM does). A last block whose JSON is complete may lack its closing tag
(generation stopped right after it)."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    CallObjectReader,
    MalformedToolCall,
    ScannerToolParser,
    ToolCallScanner,
    match_marker,
    partial_suffix_len,
    skip_ws,
)

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


class HermesScanner(ToolCallScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "content"  # content -> call -> close -> between -> call ...
        self._reader: CallObjectReader | None = None

    def _step(self, text: str) -> bool:
        return getattr(self, f"_step_{self._state}")(text)

    def _step_content(self, text: str) -> bool:
        found = text.find(TOOL_CALL_START, self.pos)
        if found < 0:
            safe = len(text) - partial_suffix_len(text, self.pos, TOOL_CALL_START)
            self._content(text[self.pos:safe])
            self.pos = safe
            return False
        self._content(text[self.pos:found])
        self._open_call(found)
        return True

    def _open_call(self, found: int) -> None:
        self._begin_call(found)
        self.pos = found + len(TOOL_CALL_START)
        self._reader = CallObjectReader(self)
        self._state = "call"

    def _step_call(self, text: str) -> bool:
        assert self._reader is not None
        self.pos = self._reader.feed(text, self.pos)
        if not self._reader.done:
            return False
        self._end_call()
        self._state = "close"
        return True

    def _step_close(self, text: str) -> bool:
        self.pos = skip_ws(text, self.pos)
        if self.pos >= len(text):
            return False
        found = match_marker(text, self.pos, TOOL_CALL_END)
        if found is None:
            return False
        if not found:
            raise MalformedToolCall(f"expected {TOOL_CALL_END} after a tool call")
        self.pos += len(TOOL_CALL_END)
        self._state = "between"
        return True

    def _step_between(self, text: str) -> bool:
        found = text.find(TOOL_CALL_START, self.pos)
        if found < 0:  # drop the text, keeping a possible start of the next marker
            self.pos = len(text) - partial_suffix_len(text, self.pos, TOOL_CALL_START)
            return False
        self._open_call(found)
        return True

    def _finish(self, text: str) -> None:
        if self._state == "content":
            self._content(text[self.pos:])
            self.pos = len(text)
        elif self._state == "call":
            raise MalformedToolCall("unfinished tool call")


class Hermes2ProToolParser(ScannerToolParser):
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return HermesScanner(tools)
