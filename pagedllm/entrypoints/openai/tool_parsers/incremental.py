"""The machinery every tool parser here shares: one incremental scanner serves both the one-piece
parse and streaming, so the two agree for any chunking of the text.

A parser is a `ToolCallScanner` subclass: `scan(text)` reads the growing text from where it
stopped (linear overall) and appends events (content text, a call's name, a fragment of its
arguments); `finish()` ends the text. `ScannerToolParser` turns the events into an
`ExtractedToolCalls` (whole text) or `ToolStreamDelta`s (streaming). A malformed call makes the
one-piece parse return the whole text as content; streaming cannot take back what it sent, so
there the rest of the text (from the failed call's start when nothing of it was sent) goes out as
content.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.abstract import (
    DeltaToolCall,
    ExtractedToolCalls,
    FunctionCall,
    ToolCall,
    ToolParser,
    ToolStreamDelta,
    make_tool_call_id,
)
from pagedllm.entrypoints.openai.tool_parsers.json_stream import JsonCanonicalizer

_WS = " \t\n\r"
MAX_NAME_CHARS = 256
"""A function name longer than this is not a call (bounds the text held back while waiting)."""


class MalformedToolCall(ValueError):
    pass


@dataclass
class Event:
    kind: str  # "content" | "name" | "args"
    text: str
    index: int = 0
    call_id: str | None = None


def partial_suffix_len(text: str, start: int, marker: str) -> int:
    """Length of the longest suffix of text[start:] that is a proper prefix of marker (text to
    hold back: the marker may be completed by the next delta)."""
    longest = min(len(marker) - 1, len(text) - start)
    for size in range(longest, 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


def match_marker(text: str, pos: int, marker: str) -> bool | None:
    """At text[pos:]: True if marker is there, None if the text so far is a prefix of it (wait),
    False if it is not there."""
    if text.startswith(marker, pos):
        return True
    return None if marker.startswith(text[pos:]) else False


class ToolCallScanner(ABC):
    """Incremental scanner over a growing text. Subclasses implement `_step`, which consumes from
    self.pos and returns False when it needs more text."""

    def __init__(self, tools: list[dict[str, Any]]) -> None:
        self.tools = tools
        self.pos = 0
        self.events: list[Event] = []
        self.num_calls = 0
        self.error: str | None = None
        self._failed_passthrough = False
        self._call_start = 0
        self._in_call = False
        self._call_named = False

    def scan(self, text: str) -> list[Event]:
        """Read text[self.pos:] (text only ever grows); return the new events."""
        self.events = []
        self._on_scan()
        try:
            while self.pos < len(text) and not self._failed_passthrough and self._step(text):
                pass
        except MalformedToolCall as e:
            self._fail(str(e))
        self._pass_through_if_failed(text)
        return self.events

    def finish(self, text: str) -> list[Event]:
        """The text is complete: release what was held back, or fail an unfinished call."""
        events = self.scan(text)
        self.events = events
        if not self._failed_passthrough:
            try:
                self._finish(text)
            except MalformedToolCall as e:
                self._fail(str(e))
            self._pass_through_if_failed(text)
        return self.events

    def _pass_through_if_failed(self, text: str) -> None:
        """After a malformed call, the rest of the text is content."""
        if self._failed_passthrough:
            self._content(text[self.pos:])
            self.pos = len(text)

    @abstractmethod
    def _step(self, text: str) -> bool:
        """Consume some of text from self.pos; False: wait for more text."""

    def _finish(self, text: str) -> None:
        """End of text in the current state (default: fine, hold nothing)."""

    def _on_scan(self) -> None:
        """Called at the start of every scan, before any text is read."""

    # -- helpers for subclasses ---------------------------------------------------------------
    def _content(self, text: str) -> None:
        if text:
            self.events.append(Event("content", text))

    def _begin_call(self, start: int) -> None:
        """A call starts at text[start]; on failure before its name is out, replay from there."""
        self._call_start = start
        self._in_call = True
        self._call_named = False

    def _name(self, name: str) -> None:
        self.events.append(Event("name", name, self.num_calls, make_tool_call_id()))
        self._call_named = True

    def _args(self, fragment: str) -> None:
        if fragment:
            self.events.append(Event("args", fragment, self.num_calls))

    def _end_call(self) -> None:
        self.num_calls += 1
        self._in_call = self._call_named = False

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._failed_passthrough = True
        if self._in_call and not self._call_named:
            self.pos = min(self.pos, self._call_start)


class StateScanner(ToolCallScanner):
    """A scanner whose `_step` is the method of its current state: `_step_<state>`, with the
    steps the formats share (content up to a marker, a marker that must come next, the rest of
    the text as content)."""

    _state = "content"

    def _step(self, text: str) -> bool:
        return getattr(self, f"_step_{self._state}")(text)

    def _content_until(self, text: str, marker: str, emit: bool = True) -> int | None:
        """Consume (as content, or dropped when not emit) the text up to `marker`; its index
        once it is there, None while it is not (a possible start of it stays unread)."""
        found = text.find(marker, self.pos)
        end = found if found >= 0 else len(text) - partial_suffix_len(text, self.pos, marker)
        if emit:
            self._content(text[self.pos:end])
        self.pos = end
        return found if found >= 0 else None

    def _expect(self, text: str, *markers: str, error: str | None = None) -> str | None:
        """After whitespace, one of `markers` must come: the one consumed, or None while the
        text may still turn into one; MalformedToolCall (`error`) when none can."""
        self.pos = skip_ws(text, self.pos)
        if self.pos >= len(text):
            return None
        results = [match_marker(text, self.pos, m) for m in markers]
        for marker, result in zip(markers, results):
            if result:
                self.pos += len(marker)
                return marker
        if all(r is False for r in results):
            raise MalformedToolCall(error or f"expected one of {markers}")
        return None

    def _next_char(self, text: str) -> str | None:
        """Skip whitespace; the next character, None while there is none yet."""
        self.pos = skip_ws(text, self.pos)
        return text[self.pos] if self.pos < len(text) else None

    def _rest_is_content(self, text: str) -> None:
        self._content(text[self.pos:])
        self.pos = len(text)

    def _read_call(self, text: str, reader: CallObjectReader, next_state: str) -> bool:
        """Feed a call object's reader; at the end of the object, end the call and move on."""
        self.pos = reader.feed(text, self.pos)
        if not reader.done:
            return False
        self._end_call()
        self._state = next_state
        return True


class CallObjectReader:
    """Reads one `{"name": "...", "arguments" | "parameters": {...}}` object into name/args events
    on a scanner: the name goes out as soon as it is read, the arguments canonicalized as they
    arrive (held until the name is out if they come first). Missing arguments read as {}."""

    def __init__(self, scanner: ToolCallScanner,
                 arg_keys: tuple[str, ...] = ("arguments", "parameters")) -> None:
        self.scanner = scanner
        self.arg_keys = arg_keys
        self.done = False
        self._state = "open"
        self._first_key = True
        self._key: str | None = None
        self._value: JsonCanonicalizer | None = None
        self._value_text: list[str] = []
        self._name: str | None = None
        self._held_args: list[str] = []
        self._args_seen = False

    def feed(self, text: str, pos: int) -> int:
        """Consume from pos; return the new pos (done turns True at the closing brace)."""
        while pos < len(text) and not self.done:
            if self._value is not None:
                pos = self._feed_value(text, pos)
                continue
            pos = skip_ws(text, pos)
            if pos >= len(text):
                break
            if self._state == "key" and text[pos] == '"':  # the key string: read as a value
                self._key = None
                self._start_value()
                continue
            self._structural(text[pos])
            pos += 1
        return pos

    def _structural(self, c: str) -> None:
        state = self._state
        if state == "open" and c == "{":
            self._state = "key"
        elif state == "key" and c == "}" and self._first_key:
            self._close()
        elif state == "colon" and c == ":":
            self._start_value()
        elif state == "after" and c == ",":
            self._state, self._first_key = "key", False
        elif state == "after" and c == "}":
            self._close()
        else:
            raise MalformedToolCall(f"unexpected {c!r} in a tool call object")

    def _start_value(self) -> None:
        is_args = self._key in self.arg_keys
        self._value = JsonCanonicalizer(require_object=is_args)
        self._value_text = []
        if is_args:
            if self._args_seen:
                raise MalformedToolCall("arguments given twice")
            self._args_seen = True

    def _feed_value(self, text: str, pos: int) -> int:
        value = self._value
        assert value is not None
        try:
            out, pos = value.feed(text, pos)
        except ValueError as e:
            raise MalformedToolCall(str(e)) from e
        if self._key in self.arg_keys:
            self._emit_args(out)
        else:
            self._value_text.append(out)
        if value.done:
            self._value = None
            self._value_done("".join(self._value_text))
        return pos

    def _value_done(self, canonical: str) -> None:
        if self._key is None:  # that was the key itself
            self._key = json.loads(canonical)
            self._state = "colon"
            return
        if self._key == "name":
            name = json.loads(canonical)
            if not isinstance(name, str) or not name or self._name is not None:
                raise MalformedToolCall("a tool call needs one string name")
            self._name = name
            self.scanner._name(name)
            self._emit_args("".join(self._held_args))
            self._held_args = []
        self._state = "after"

    def _emit_args(self, fragment: str) -> None:
        if self._name is None:
            self._held_args.append(fragment)
        else:
            self.scanner._args(fragment)

    def _close(self) -> None:
        if self._name is None:
            raise MalformedToolCall("a tool call object without a name")
        if not self._args_seen:
            self.scanner._args("{}")
        self.done = True


class ScannerToolParser(ToolParser):
    """A ToolParser driven by a ToolCallScanner: one fresh scanner for a one-piece parse, one per
    instance (= per choice) for streaming."""

    def __init__(self, tokenizer: Any = None) -> None:
        super().__init__(tokenizer)
        self._stream_scanner: ToolCallScanner | None = None
        self._stream_text = ""

    @abstractmethod
    def new_scanner(self, tools: list[dict[str, Any]]) -> ToolCallScanner:
        """A fresh scanner for one text."""

    def extract_tool_calls(self, model_output: str, tools: list[dict[str, Any]]
                           ) -> ExtractedToolCalls:
        scanner = self.new_scanner(tools or [])
        events = scanner.finish(model_output)
        if scanner.error is not None or scanner.num_calls == 0:
            return ExtractedToolCalls(False, [], model_output)
        return events_to_extracted(events)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                     delta_text: str, tools: list[dict[str, Any]]
                                     ) -> ToolStreamDelta | None:
        if self._stream_scanner is None:
            self._stream_scanner = self.new_scanner(tools or [])
        self._stream_text = current_text
        return events_to_delta(self._stream_scanner.scan(current_text))

    def flush_streaming(self) -> ToolStreamDelta | None:
        """End of the stream: release text held back as a possible marker start."""
        if self._stream_scanner is None:
            return None
        return events_to_delta(self._stream_scanner.finish(self._stream_text))


def events_to_extracted(events: list[Event]) -> ExtractedToolCalls:
    content: list[str] = []
    names: dict[int, tuple[str, str]] = {}
    args: dict[int, list[str]] = {}
    for ev in events:
        if ev.kind == "content":
            content.append(ev.text)
        elif ev.kind == "name":
            names[ev.index] = (ev.text, ev.call_id or make_tool_call_id())
        else:
            args.setdefault(ev.index, []).append(ev.text)
    calls = [ToolCall(FunctionCall(name, "".join(args.get(i, []))), id=call_id)
             for i, (name, call_id) in sorted(names.items())]
    return ExtractedToolCalls(bool(calls), calls, "".join(content) or None)


def events_to_delta(events: list[Event]) -> ToolStreamDelta | None:
    if not events:
        return None
    content: list[str] = []
    calls: list[DeltaToolCall] = []
    for ev in events:
        if ev.kind == "content":
            content.append(ev.text)
        elif ev.kind == "name":
            calls.append(DeltaToolCall(ev.index, id=ev.call_id, name=ev.text))
        elif calls and calls[-1].index == ev.index:
            calls[-1].arguments = (calls[-1].arguments or "") + ev.text
        else:
            calls.append(DeltaToolCall(ev.index, arguments=ev.text))
    return ToolStreamDelta(content="".join(content) or None, tool_calls=calls)
