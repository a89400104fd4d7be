"""Mistral tool calls, both forms: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (older
tokenizers) and `[TOOL_CALLS]name[ARGS]{...}` repeated per call (v11+; `name[CALL_ID]id[ARGS]`
also read). Text before the first `[TOOL_CALLS]` is content.

NOTE: `[TOOL_CALLS]`/`[ARGS]` are special tokens: the server must detokenize with
skip_special_tokens=False for this parser to see them (as vLLM requires)."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    MAX_NAME_CHARS,
    CallObjectReader,
    MalformedToolCall,
    ScannerToolParser,
    StateScanner,
    ToolCallScanner,
    partial_suffix_len,
)
from pagedllm.entrypoints.openai.tool_parsers.json_stream import JsonCanonicalizer

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"


class MistralScanner(StateScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "content"
        self._reader: CallObjectReader | None = None
        self._args_json: JsonCanonicalizer | None = None
        self._name_start = 0

    def _step_content(self, text: str) -> bool:
        found = self._content_until(text, TOOL_CALLS)
        if found is None:
            return False
        self._begin_call(found)
        self.pos = found + len(TOOL_CALLS)
        self._state = "marker"
        return True

    def _step_marker(self, text: str) -> bool:
        """After [TOOL_CALLS]: a JSON array of calls, or a bare name."""
        first = self._next_char(text)
        if first is None:
            return False
        if first == "[":
            self.pos += 1
            self._state = "array_call"
        else:
            self._name_start = self.pos
            self._state = "name"
        return True

    # -- [TOOL_CALLS][{...}, {...}] ------------------------------------------------------------
    def _step_array_call(self, text: str) -> bool:
        if self._reader is None:
            if self._next_char(text) is None:
                return False
            if self.num_calls > 0:
                self._begin_call(self.pos)
            self._reader = CallObjectReader(self)
        if not self._read_call(text, self._reader, "array_after"):
            return False
        self._reader = None
        return True

    def _step_array_after(self, text: str) -> bool:
        c = self._next_char(text)
        if c is None:
            return False
        if c not in ",]":
            raise MalformedToolCall("expected ',' or ']' after a tool call")
        self.pos += 1
        self._state = "array_call" if c == "," else "after"
        return True

    # -- [TOOL_CALLS]name[ARGS]{...} -----------------------------------------------------------
    def _step_name(self, text: str) -> bool:
        found = text.find(ARGS, self.pos)
        if found < 0:
            self.pos = len(text) - partial_suffix_len(text, self.pos, ARGS)
            if self.pos - self._name_start > MAX_NAME_CHARS:
                raise MalformedToolCall("no [ARGS] after a tool name")
            return False
        name = text[self._name_start:found].split(CALL_ID, 1)[0].strip()
        if not name or len(name) > MAX_NAME_CHARS or any(c in name for c in "{}[]\"\n"):
            raise MalformedToolCall(f"invalid tool name {name[:40]!r}")
        self._name(name)
        self.pos = found + len(ARGS)
        self._args_json = JsonCanonicalizer(require_object=True)
        self._state = "args"
        return True

    def _step_args(self, text: str) -> bool:
        assert self._args_json is not None
        try:
            out, self.pos = self._args_json.feed(text, self.pos)
        except ValueError as e:
            raise MalformedToolCall(str(e)) from e
        self._args(out)
        if not self._args_json.done:
            return False
        self._end_call()
        self._state = "after"
        return True

    def _step_after(self, text: str) -> bool:
        """After a call or the array: only another [TOOL_CALLS] may follow."""
        if self._expect(text, TOOL_CALLS, error="text after the tool calls") is None:
            return False
        self._begin_call(self.pos - len(TOOL_CALLS))
        self._state = "marker"
        return True

    def _finish(self, text: str) -> None:
        if self._state == "content":
            self._rest_is_content(text)
        elif self._state != "after":
            raise MalformedToolCall("unfinished tool call")


class MistralToolParser(ScannerToolParser):
    needs_special_tokens = True

    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return MistralScanner(tools)
