"""The tool calls in a chat answer, whole or streamed, for each tool_choice.

- "none": no calls; the text is the content.
- named function: the grammar made the text the call's arguments (a JSON object).
- "required": the grammar made the text a JSON array `[{"name": ..., "parameters": {...}}]`.
- "auto": the --tool-call-parser finds the calls in the model's own text.

Streaming sends OpenAI-shaped deltas: a call's id and name first, then fragments of its
arguments, so reassembling the deltas gives the call the non-streaming answer has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, NamedToolChoice
from pagedllm.entrypoints.openai.tool_parsers import ToolCall, ToolParser, ToolStreamDelta
from pagedllm.entrypoints.openai.tool_parsers.forced import (
    NamedToolCallStreamer,
    RequiredToolCallsStreamer,
)

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

    def parser(self, tokenizer: Any) -> ToolParser | None:
        """A fresh parser for one choice (None: the text is plain content)."""
        if self.choice == "named":
            return NamedToolCallStreamer(self.name or "", tokenizer)
        if self.choice == "required":
            return RequiredToolCallsStreamer(tokenizer)
        if self.choice == "auto":
            assert self.parser_cls is not None
            return self.parser_cls(tokenizer)
        return None

    def new_streamer(self, tokenizer: Any) -> ToolCallStreamer | None:
        parser = self.parser(tokenizer)
        return None if parser is None else ToolCallStreamer(parser, self.tools)

    def extract(self, text: str, tokenizer: Any) -> tuple[list[ToolCall], str | None]:
        """The whole answer -> (calls, content). Named and "required" answers are all calls
        (content ""), as vLLM's."""
        parser = self.parser(tokenizer)
        if parser is None:
            return [], text
        found = parser.extract_tool_calls(text, self.tools)
        if not found.tools_called:
            return [], text
        content = "" if self.choice in ("named", "required") else found.content
        return found.tool_calls, content


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


# ---- streaming -----------------------------------------------------------------------------------


class ToolCallStreamer:
    """Per-choice: text deltas -> what to send (content and/or tool-call deltas), through a
    ToolParser (the family's for "auto", a forced-choice streamer for named / "required")."""

    def __init__(self, parser: ToolParser, tools: list[dict[str, Any]]) -> None:
        self.parser = parser
        self.tools = tools
        self.text = ""
        self.tools_called = False

    def feed(self, delta: str) -> ToolStreamDelta | None:
        previous, self.text = self.text, self.text + delta
        out = self.parser.extract_tool_calls_streaming(previous, self.text, delta, self.tools)
        return self._seen(out)

    def flush(self) -> ToolStreamDelta | None:
        """End of the choice: whatever the parser held back (a stream that ended inside what
        looked like the start of a call marker)."""
        return self._seen(self.parser.flush_streaming())

    def _seen(self, out: ToolStreamDelta | None) -> ToolStreamDelta | None:
        if out is not None and out.tool_calls:
            self.tools_called = True
        return out
