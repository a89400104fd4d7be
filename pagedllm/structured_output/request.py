"""StructuredOutputRequest: one request's constraint state on the engine core side."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from pagedllm.structured_output.backend import ConstraintKey, StructuredOutputGrammar


@dataclass
class StructuredOutputRequest:
    key: ConstraintKey | None
    """The grammar's constraint (None: no grammar, only a thinking budget)."""
    compiled: Future | None = None
    """The compiled grammar, being compiled on the manager's threads."""
    grammar: StructuredOutputGrammar | None = None
    """This request's matcher, made once the compiled grammar is ready."""
    reasoning_ended: bool = True
    """False while a reasoning model thinks: the grammar starts after the thinking."""
    num_reasoning_tokens: int = 0
    thinking_token_budget: int | None = None
    failed: str | None = field(default=None)
    """Why the grammar could not be built or advanced (the request is then aborted)."""

    @property
    def is_ready(self) -> bool:
        """Schedulable: no grammar needed, or its compilation finished."""
        return self.compiled is None or self.compiled.done()
