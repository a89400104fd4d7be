"""Reasoning parsers by name (`--reasoning-parser NAME`); modules load when their name is used."""

from __future__ import annotations

from pagedllm.reasoning.abstract import ReasoningDelta, ReasoningParser
from pagedllm.utils.registry import Registry

REASONING_PARSERS = Registry("reasoning parser")

for _name, _module, _cls in (
    ("deepseek_r1", "deepseek_r1_reasoning_parser", "DeepSeekR1ReasoningParser"),
    ("qwen3", "qwen3_reasoning_parser", "Qwen3ReasoningParser"),
    ("granite", "granite_reasoning_parser", "GraniteReasoningParser"),
):
    REASONING_PARSERS.register(_name, f"pagedllm.reasoning.{_module}", _cls)

__all__ = ["REASONING_PARSERS", "ReasoningDelta", "ReasoningParser"]
