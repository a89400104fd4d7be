"""Tool-call parsers by name (`--tool-call-parser NAME`); modules load when their name is used."""

from __future__ import annotations

from pagedllm.entrypoints.openai.tool_parsers.abstract import (
    DeltaToolCall,
    ExtractedToolCalls,
    FunctionCall,
    ToolCall,
    ToolParser,
    ToolStreamDelta,
)
from pagedllm.utils.registry import Registry

TOOL_PARSERS = Registry("tool call parser")

_PACKAGE = "pagedllm.entrypoints.openai.tool_parsers"
for _name, _module, _cls in (
    ("hermes", "hermes_tool_parser", "Hermes2ProToolParser"),
    ("llama3_json", "llama_tool_parser", "Llama3JsonToolParser"),
    ("pythonic", "pythonic_tool_parser", "PythonicToolParser"),
    ("mistral", "mistral_tool_parser", "MistralToolParser"),
    ("qwen3_coder", "qwen3coder_tool_parser", "Qwen3CoderToolParser"),
):
    TOOL_PARSERS.register(_name, f"{_PACKAGE}.{_module}", _cls)

__all__ = ["TOOL_PARSERS", "DeltaToolCall", "ExtractedToolCalls", "FunctionCall", "ToolCall",
           "ToolParser", "ToolStreamDelta"]
