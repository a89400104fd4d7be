"""The tool calls in a chat answer, whole or streamed, for each tool_choice.

- "none": no calls; the text is the content.
- named function: the grammar made the text the call's arguments (a JSON object).
- "required": the grammar made the text a JSON array `[{"name": ..., "parameters": {...}}]`.
- "auto": the --tool-call-parser finds the calls in the model's own text.

Streaming sends OpenAI-shaped deltas: a call's id and name first, then fragments of its
arguments, so reassembling the deltas gives the call the non-streaming answer has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, NamedToolChoice
from pagedllm.entrypoints.openai.tool_parsers import (
    DeltaToolCall,
    FunctionCall,
    ToolCall,
    ToolParser,
    ToolStreamDelta,
)
from pagedllm.entrypoints.openai.tool_parsers.abstract import make_tool_call_id

AUTO_TOOL_CHOICE_ERROR = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')


@dataclass
class ToolSettings:
    """The server's tool flags."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = False


@dataclass
class ToolMode:
    """How one request's output becomes tool calls."""

    choice: str
    """"none", "auto", "required" or "named"."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None
    """The function of a named tool_choice."""
    parser_cls: type[ToolParser] | None = None
    """The --tool-call-parser's class ("auto")."""

    def new_streamer(self, tokenizer: Any) -> ToolCallStreamer | None:
        """Per-choice streaming state (None: the text is plain content)."""
        if self.choice == "named":
            return NamedCallStreamer(self.name or "")
        if self.choice == "required":
            return RequiredCallStreamer()
        if self.choice == "auto":
            assert self.parser_cls is not None
            return ParserStreamer(self.parser_cls(tokenizer), self.tools)
        return None

    def extract(self, text: str, tokenizer: Any) -> tuple[list[ToolCall], str | None]:
        """The whole answer -> (calls, content)."""
        if self.choice == "named":
            return [ToolCall(FunctionCall(self.name or "", text))], ""
        if self.choice == "required":
            calls = required_calls(text)
            return (calls, "") if calls else ([], text)
        if self.choice == "auto":
            assert self.parser_cls is not None
            found = self.parser_cls(tokenizer).extract_tool_calls(text, self.tools)
            if found.tools_called:
                return found.tool_calls, found.content
        return [], text


def tool_mode(request: ChatCompletionRequest, settings: ToolSettings) -> ToolMode:
    """The request's ToolMode; ValueError for "auto" on a server without a tool parser."""
    tools = request.tool_dicts() or []
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ToolMode("named", tools, name=choice.function.name)
    if choice == "auto" and tools:
        if not (settings.enable_auto_tool_choice and settings.tool_call_parser):
            raise ValueError(AUTO_TOOL_CHOICE_ERROR)
        from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS

        return ToolMode("auto", tools, parser_cls=TOOL_PARSERS.get(settings.tool_call_parser))
    if choice == "required":
        return ToolMode("required", tools)
    return ToolMode("none", tools)


def required_calls(text: str) -> list[ToolCall]:
    """The calls of a "required" answer (empty if the text is not a complete array of calls,
    e.g. cut by max_tokens)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return []
    # The arguments are the model's own text of each "parameters" (the same bytes the stream
    # sends), not a re-serialization.
    streamer = RequiredCallStreamer()
    streamer.feed(text)
    return [ToolCall(FunctionCall(c.name or "", c.arguments()), id=c.id)
            for c in streamer.calls]


# ---- streaming -----------------------------------------------------------------------------------


class ToolCallStreamer:
    """Per-choice: text deltas -> what to send (content and/or tool-call deltas)."""

    tools_called: bool = False

    def feed(self, delta: str) -> ToolStreamDelta | None:
        raise NotImplementedError


class NamedCallStreamer(ToolCallStreamer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.id = make_tool_call_id()

    def feed(self, delta: str) -> ToolStreamDelta | None:
        if not delta:
            return None
        first = not self.tools_called
        self.tools_called = True
        call = DeltaToolCall(0, id=self.id if first else None, name=self.name if first else None,
                             arguments=delta)
        return ToolStreamDelta(tool_calls=[call])


class ParserStreamer(ToolCallStreamer):
    """"auto": the model family's parser, given the whole text so far at each step."""

    def __init__(self, parser: ToolParser, tools: list[dict[str, Any]]) -> None:
        self.parser = parser
        self.tools = tools
        self.text = ""

    def feed(self, delta: str) -> ToolStreamDelta | None:
        previous, self.text = self.text, self.text + delta
        out = self.parser.extract_tool_calls_streaming(previous, self.text, delta, self.tools)
        if out is not None and out.tool_calls:
            self.tools_called = True
        return out


@dataclass
class _ScannedCall:
    index: int
    id: str = field(default_factory=make_tool_call_id)
    name: str | None = None
    args_start: int | None = None
    args_end: int = 0
    """One past the last non-blank character of the parameters value seen so far."""
    sent_name: bool = False
    sent_upto: int | None = None
    text: str = ""

    def arguments(self) -> str:
        if self.args_start is None:
            return "{}"
        return self.text[self.args_start:self.args_end]


class RequiredCallStreamer(ToolCallStreamer):
    """"required": scans the JSON array `[{"name": ..., "parameters": {...}}, ...]` one
    character at a time (linear in the text), sending each call's name once it is complete and
    the raw text of its parameters as it arrives."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[_ScannedCall] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._string_start = 0
        self._state = "key"
        """Inside a call object: expecting a "key", its "colon", its "value", or "after"."""
        self._key: str | None = None
        self._in_args = False

    def feed(self, delta: str) -> ToolStreamDelta | None:
        start = len(self.text)
        self.text += delta
        out: list[DeltaToolCall] = []
        for i in range(start, len(self.text)):
            self._step(i, self.text[i], out)
        if self.calls:
            self._flush(self.calls[-1], out)
        if not out:
            return None
        self.tools_called = True
        return ToolStreamDelta(tool_calls=out)

    def _step(self, i: int, ch: str, out: list[DeltaToolCall]) -> None:
        call = self.calls[-1] if self.calls else None
        if self._in_string:
            self._string_char(i, ch, call)
        elif ch in "{[":
            self._depth += 1
            if self._depth == 2 and ch == "{":  # a call object opens
                self.calls.append(_ScannedCall(len(self.calls)))
                self._state, self._key, self._in_args = "key", None, False
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 1 and call is not None:  # the call object closes
                self._in_args = False
                call.text = self.text
                self._flush(call, out)
        elif ch == '"':
            self._in_string, self._string_start = True, i
        elif self._depth == 2 and ch == ":":
            self._state = "value"
            return
        elif self._depth == 2 and ch == ",":
            self._state, self._in_args = "key", False
        if call is not None and self._depth >= 2 and self._state == "value" \
                and self._key == "parameters" and not ch.isspace():
            self._mark_args(i, call)

    def _string_char(self, i: int, ch: str, call: _ScannedCall | None) -> None:
        if self._escape:
            self._escape = False
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            self._in_string = False
            if self._depth == 2 and call is not None and not self._in_args:
                self._string_done(self.text[self._string_start:i + 1], call)

    def _string_done(self, raw: str, call: _ScannedCall) -> None:
        value = json.loads(raw)
        if self._state == "key":
            self._key, self._state = value, "colon"
        elif self._state == "value" and self._key == "name":
            call.name, self._state = value, "after"

    def _mark_args(self, i: int, call: _ScannedCall) -> None:
        if not self._in_args:
            self._in_args = True
            call.args_start = i
        call.args_end = i + 1

    def _flush(self, call: _ScannedCall, out: list[DeltaToolCall]) -> None:
        call.text = self.text
        if call.name is None:
            return  # the name goes first; the arguments wait for it
        delta = DeltaToolCall(call.index)
        if not call.sent_name:
            delta.id, delta.name, call.sent_name = call.id, call.name, True
        if call.args_start is not None:
            upto = call.sent_upto if call.sent_upto is not None else call.args_start
            if call.args_end > upto:
                delta.arguments = self.text[upto:call.args_end]
                call.sent_upto = call.args_end
        if delta.name is not None or delta.arguments:
            out.append(delta)
