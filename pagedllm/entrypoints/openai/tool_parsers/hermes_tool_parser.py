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
    StateScanner,
    ToolCallScanner,
)

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


class HermesScanner(StateScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "content"  # content -> call -> close -> between -> call ...
        self._reader: CallObjectReader | None = None

    def _step_content(self, text: str) -> bool:
        found = self._content_until(text, TOOL_CALL_START)
        if found is None:
            return False
        self._open_call(found)
        return True

    def _open_call(self, found: int) -> None:
        self._begin_call(found)
        self.pos = found + len(TOOL_CALL_START)
        self._reader = CallObjectReader(self)
        self._state = "call"

    def _step_call(self, text: str) -> bool:
        assert self._reader is not None
        return self._read_call(text, self._reader, "close")

    def _step_close(self, text: str) -> bool:
        error = f"expected {TOOL_CALL_END} after a tool call"
        if self._expect(text, TOOL_CALL_END, error=error) is None:
            return False
        self._state = "between"
        return True

    def _step_between(self, text: str) -> bool:
        found = self._content_until(text, TOOL_CALL_START, emit=False)  # dropped, as vLLM
        if found is None:
            return False
        self._open_call(found)
        return True

    def _finish(self, text: str) -> None:
        if self._state == "content":
            self._rest_is_content(text)
        elif self._state == "call":
            raise MalformedToolCall("unfinished tool call")


class Hermes2ProToolParser(ScannerToolParser):
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return HermesScanner(tools)
