"""ToolParser: find the tool calls in a model's text (`tool_choice: "auto"`).

Each model family writes calls its own way (Hermes/Qwen `<tool_call>{json}</tool_call>`, Llama 3
bare JSON, pythonic `[f(x=1)]`, Mistral `[TOOL_CALLS]`, Qwen3-Coder XML). A parser turns the
whole output into calls plus the remaining text, or, streaming, turns each text delta into
OpenAI-shaped tool-call deltas (the name first, then fragments of the JSON arguments). A
streaming parser keeps per-choice state: the server makes one instance per choice. Parsers run
in linear time in the text (no backtracking regexes over the model's output).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


def make_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class FunctionCall:
    name: str
    arguments: str
    """The arguments as JSON text (an object)."""


@dataclass
class ToolCall:
    function: FunctionCall
    id: str = field(default_factory=make_tool_call_id)
    type: str = "function"


@dataclass
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None
    """The text that is not a call (None when there is none)."""


@dataclass
class DeltaToolCall:
    """One streaming fragment of call number `index`: its id and name come once, first;
    arguments come as consecutive fragments of the JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class ToolStreamDelta:
    content: str | None = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)


class ToolParser(ABC):
    needs_special_tokens: bool = False
    """The family marks calls with special tokens ([TOOL_CALLS]): the server must keep special
    tokens in the text it parses (skip_special_tokens=False), as vLLM's adjust_request does."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def extract_tool_calls(self, model_output: str, tools: list[dict[str, Any]]
                           ) -> ExtractedToolCalls:
        """The whole output -> calls and the remaining content. `tools` are the request's tool
        definitions (OpenAI shape: {"type": "function", "function": {"name", "parameters"}})."""

    @abstractmethod
    def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                     delta_text: str, tools: list[dict[str, Any]]
                                     ) -> ToolStreamDelta | None:
        """One streaming step (current_text = previous_text + delta_text) -> what to send now,
        or None to hold the delta back (e.g. a possible start of a call marker)."""

    def flush_streaming(self) -> ToolStreamDelta | None:
        """End of the stream: text held back as a possible start of a call marker (the stream
        ended inside it). Call once after the last extract_tool_calls_streaming."""
        return None
