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

__all__ = ["TOOL_PARSERS", "DeltaToolCall", "ExtractedToolCalls", "FunctionCall", "ToolCall",
           "ToolParser", "ToolStreamDelta"]
