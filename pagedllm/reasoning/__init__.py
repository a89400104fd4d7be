"""Reasoning parsers by name (`--reasoning-parser NAME`); modules load when their name is used."""

from __future__ import annotations

from pagedllm.reasoning.abstract import ReasoningDelta, ReasoningParser
from pagedllm.utils.registry import Registry

REASONING_PARSERS = Registry("reasoning parser")

__all__ = ["REASONING_PARSERS", "ReasoningDelta", "ReasoningParser"]
