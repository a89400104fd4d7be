"""Pythonic tool calls (Llama 3.2/4, ToolACE): the whole output is a Python list of calls,
`[get_weather(city="Paris"), f(x=1)]`. Each call is parsed with `ast` (never evaluated): keyword
arguments only, values literals (`ast.literal_eval` on the node), converted to JSON. An output
that is not such a list is content.

Streaming: a call's name goes out at its `(`, its arguments (one fragment) at its `)`; a small
scanner tracks bracket depth and string quotes to find the `)` in linear time."""

from __future__ import annotations

import ast
import json
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.incremental import (
    MAX_NAME_CHARS,
    MalformedToolCall,
    ScannerToolParser,
    StateScanner,
    ToolCallScanner,
    skip_ws,
)

_OPEN, _CLOSE = "([{", ")]}"


def parse_call(call_text: str, name: str) -> str:
    """`name(k=v, ...)` -> the arguments as JSON text; MalformedToolCall if it is not a call with
    literal keyword arguments."""
    try:
        node = ast.parse(call_text, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == name and not node.args):
            raise MalformedToolCall("not a call with keyword arguments")
        args: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise MalformedToolCall("**kwargs in a tool call")
            args[kw.arg] = ast.literal_eval(kw.value)
        return json.dumps(args, ensure_ascii=False, allow_nan=False)
    except MalformedToolCall:
        raise
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise MalformedToolCall(f"invalid pythonic tool call: {type(e).__name__}") from e


class PythonicScanner(StateScanner):
    def __init__(self, tools: list[dict[str, Any]]) -> None:
        super().__init__(tools)
        self._state = "start"  # start | content | name | body | after | end
        self._name_start = 0
        self._depth = 0
        self._quote = ""
        self._escaped = False

    def _step_start(self, text: str) -> bool:
        first = skip_ws(text, self.pos)
        if first >= len(text):
            return False
        if text[first] == "[":
            self._begin_call(0)  # a failed first call gives the whole text back as content
            self.pos = first + 1
            self._state = "name"
        else:
            self._state = "content"
        return True

    def _step_content(self, text: str) -> bool:
        self._rest_is_content(text)
        return False

    def _step_name(self, text: str) -> bool:
        start = skip_ws(text, self.pos)
        end = start
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        if end - start > MAX_NAME_CHARS:
            raise MalformedToolCall("tool name too long")
        if end >= len(text):
            return False  # the name may go on
        name = text[start:end]
        if text[end] != "(" or not name.isidentifier():
            raise MalformedToolCall("expected a function call in the list")
        if self.num_calls > 0:
            self._begin_call(start)
        self._name_start = start
        self._name(name)
        self.pos = end + 1
        self._depth, self._quote, self._escaped = 1, "", False
        self._state = "body"
        return True

    def _step_body(self, text: str) -> bool:
        """Scan to the `)` that closes the call, skipping brackets and strings."""
        pos, n = self.pos, len(text)
        while pos < n:
            c = text[pos]
            pos += 1
            if self._quote:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == self._quote:
                    self._quote = ""
            elif c in "'\"":
                self._quote = c
            elif c in _OPEN:
                self._depth += 1
            elif c in _CLOSE:
                self._depth -= 1
                if self._depth == 0:
                    self.pos = pos
                    return self._call_closed(text)
        self.pos = pos
        return False

    def _call_closed(self, text: str) -> bool:
        call_text = text[self._name_start:self.pos]
        name = call_text[:call_text.index("(")]
        self._args(parse_call(call_text, name))
        self._end_call()
        self._state = "after"
        return True

    def _step_after(self, text: str) -> bool:
        self.pos = skip_ws(text, self.pos)
        if self.pos >= len(text):
            return False
        c = text[self.pos]
        if c not in ",]":
            raise MalformedToolCall("expected ',' or ']' after a call")
        self.pos += 1
        self._state = "name" if c == "," else "end"
        return True

    def _step_end(self, text: str) -> bool:
        self.pos = skip_ws(text, self.pos)
        if self.pos < len(text):
            raise MalformedToolCall("text after the list of calls")
        return False

    def _finish(self, text: str) -> None:
        if self._state in ("start", "content"):
            self._content(text[self.pos:])
            self.pos = len(text)
        elif self._state != "end":
            raise MalformedToolCall("unfinished list of calls")


class PythonicToolParser(ScannerToolParser):
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        return PythonicScanner(tools)
