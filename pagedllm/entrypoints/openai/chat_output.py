"""A chat choice's text -> the assistant message: thinking (--reasoning-parser) first, then tool
calls in what follows it (tool_choice), whole or as streaming deltas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.chat_tools import ToolMode
from pagedllm.entrypoints.openai.protocol import ChatMessage, DeltaMessage
from pagedllm.entrypoints.openai.protocol_tools import (
    DeltaFunctionCall,
    DeltaToolCallModel,
    FunctionCallModel,
    ToolCallModel,
)
from pagedllm.entrypoints.openai.tool_parsers import ToolCall
from pagedllm.reasoning import ReasoningParser


@dataclass
class OutputOptions:
    """What one request's choices share."""

    tool_mode: ToolMode
    reasoning_parser: ReasoningParser | None
    """The server's parser (stateless between calls, so shared by every choice)."""
    include_reasoning: bool = True

    def message(self, text: str, tokenizer: Any) -> tuple[ChatMessage, bool]:
        """The whole answer -> (message, whether it holds tool calls)."""
        reasoning, content = None, text
        if self.reasoning_parser is not None:
            reasoning, content = self.reasoning_parser.extract_reasoning(text)
        calls: list[ToolCall] = []
        if content or self.tool_mode.choice in ("auto", "none"):
            calls, content = self.tool_mode.extract(content or "", tokenizer)
            if not calls and not content and self.reasoning_parser is not None:
                content = None  # all thinking, no answer
        if not self.include_reasoning:
            reasoning = None
        message = ChatMessage(role="assistant", content=content, reasoning=reasoning,
                              reasoning_content=reasoning,
                              tool_calls=[_tool_call_model(c) for c in calls])
        return message, bool(calls)


class ChoiceStream:
    """One streamed choice: each engine delta -> the DeltaMessage to send (None: nothing yet)."""

    def __init__(self, options: OutputOptions, tokenizer: Any) -> None:
        self.options = options
        self.reasoning = options.reasoning_parser
        self.tools = options.tool_mode.new_streamer(tokenizer)
        self.text = ""
        self.token_ids: list[int] = []

    @property
    def tools_called(self) -> bool:
        return self.tools is not None and self.tools.tools_called

    def step(self, delta_text: str, delta_ids: Sequence[int], final: bool = False
             ) -> DeltaMessage | None:
        """One engine delta; final: the choice's last, so the parsers give up what they held
        back as possible partial markers."""
        reasoning, content = self._split_reasoning(delta_text, delta_ids)
        if final and self.reasoning is not None:
            held = self.reasoning.flush_streaming(self.text)
            if held is not None:
                reasoning = _joined(reasoning, held.reasoning)
                content = _joined(content, held.content)
        if not self.options.include_reasoning:
            reasoning = None
        calls: list[DeltaToolCallModel] = []
        if self.tools is not None:
            pieces = [self.tools.feed(content)] if content else []
            if final:
                pieces.append(self.tools.flush())
            content = None
            for piece in pieces:
                if piece is not None:
                    content = _joined(content, piece.content)
                    calls.extend(_delta_call_model(c) for c in piece.tool_calls)
        if not (reasoning or content or calls):
            return None
        return DeltaMessage(content=content or None, reasoning=reasoning,
                            reasoning_content=reasoning, tool_calls=calls or None)

    def _split_reasoning(self, delta_text: str, delta_ids: Sequence[int]
                         ) -> tuple[str | None, str | None]:
        previous_text, previous_ids = self.text, self.token_ids
        self.text = previous_text + delta_text
        self.token_ids = [*previous_ids, *delta_ids]
        if self.reasoning is None:
            return None, delta_text
        out = self.reasoning.extract_reasoning_streaming(
            previous_text, self.text, delta_text, previous_ids, self.token_ids, delta_ids)
        if self.reasoning.is_reasoning_end(self.token_ids):
            # Thinking is over: what follows is the answer, whatever the parser would make of
            # later deltas (a model that writes the end marker again keeps it as text).
            self.reasoning = None
        if out is None:
            return None, None
        return out.reasoning, out.content


def _joined(a: str | None, b: str | None) -> str | None:
    return a + b if a and b else a or b


def finish_reason(reason: str | None, tools_called: bool) -> str | None:
    """"tool_calls" when the answer holds calls, unless it was cut ("length")."""
    if reason is not None and tools_called and reason != "length":
        return "tool_calls"
    return reason


def _tool_call_model(call: ToolCall) -> ToolCallModel:
    return ToolCallModel(id=call.id, function=FunctionCallModel(
        name=call.function.name, arguments=call.function.arguments))


def _delta_call_model(call: Any) -> DeltaToolCallModel:
    first = call.id is not None
    return DeltaToolCallModel(
        index=call.index, id=call.id, type="function" if first else None,
        function=DeltaFunctionCall(name=call.name, arguments=call.arguments))
