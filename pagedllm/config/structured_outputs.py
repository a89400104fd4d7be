"""StructuredOutputsConfig: which grammar backend constrains outputs, and how (vLLM's
`--structured-outputs-config`), plus the reasoning parser whose thinking stays unconstrained."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pagedllm.config.json_options import json_options

BACKENDS = ("auto", "xgrammar", "guidance", "outlines")
SHIPPED_BACKENDS = ("xgrammar",)
"""The backends pagedllm implements; the others are vLLM's names, refused with a clear error."""


@dataclass(frozen=True)
class StructuredOutputsConfig:
    backend: str = "auto"
    """"auto" and "xgrammar" both mean xgrammar, the backend pagedllm ships."""
    disable_any_whitespace: bool = False
    """Default for requests: JSON without optional whitespace (shorter, faster outputs)."""
    disable_additional_properties: bool = False
    """Default for requests: JSON schemas get additionalProperties: false where unset."""
    reasoning_parser: str | None = None
    """A reasoning model's parser name: its thinking is not constrained, only the answer."""
    enable_in_reasoning: bool = False
    """Constrain the thinking too."""
    max_cached_grammars: int = 256
    """Compiled grammars kept (least recently used evicted), keyed by the constraint."""
    num_compile_threads: int = 2
    """Grammars compile on these threads, off the engine's step loop."""
    max_json_schema_depth: int = 64
    """JSON schemas nested deeper (objects and arrays, as JSON text) are refused with a 400:
    compiling them costs time and memory without bound."""
    max_regex_length: int = 10_000
    max_grammar_length: int = 100_000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"structured outputs backend {self.backend!r} is unknown; one of {BACKENDS}")
        if self.backend not in ("auto", *SHIPPED_BACKENDS):
            raise ValueError(
                f"structured outputs backend {self.backend!r} is not available in pagedllm; "
                f"use 'xgrammar' (or 'auto')")

    @classmethod
    def parse(cls, value: str | dict[str, Any] | StructuredOutputsConfig | None,
              **overrides: Any) -> StructuredOutputsConfig:
        """From the CLI's JSON text, a dict (LLM kwargs), or an instance; overrides win."""
        if isinstance(value, StructuredOutputsConfig):
            data = {f.name: getattr(value, f.name) for f in fields(cls)}
        else:
            data = json_options(cls, value or {}, "--structured-outputs-config",
                                "structured outputs")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
