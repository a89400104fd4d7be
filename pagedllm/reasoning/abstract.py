"""ReasoningParser: split a reasoning model's output into its thinking and its answer.

Models such as DeepSeek-R1 and Qwen3 think between markers (`<think>` ... `</think>`) before they
answer. The parser gives the server the two parts (the message's `reasoning` and `content`), in
one piece or as streaming deltas, and tells the engine core when the thinking is over (structured
outputs constrain only the answer). One instance serves one request's choice: streaming keeps no
state outside the arguments, so instances may be shared too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class ReasoningDelta:
    """What one streaming step adds: thinking text, answer text, or both."""

    reasoning: str | None = None
    content: str | None = None


class ReasoningParser(ABC):
    start_token: str | None = None
    """The marker that opens the thinking (None: the model starts thinking unprompted)."""
    end_token: str = "</think>"
    """The marker that ends the thinking."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.start_token_id: int | None = vocab.get(self.start_token) if self.start_token else None
        self.end_token_id: int | None = vocab.get(self.end_token)

    @property
    def markers_are_special(self) -> bool:
        """The markers are special tokens in this tokenizer: detokenizing with
        skip_special_tokens would drop them, so the server keeps special tokens."""
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return any(t in special for t in (self.start_token_id, self.end_token_id)
                   if t is not None)

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        """True once the generated token_ids contain the end of the thinking."""
        return self.end_token_id is not None and self.end_token_id in token_ids

    @abstractmethod
    def extract_reasoning(self, model_output: str) -> tuple[str | None, str | None]:
        """The whole output -> (reasoning, content); None for a part that is absent."""

    @abstractmethod
    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> ReasoningDelta | None:
        """One streaming step: current_text = previous_text + delta_text. None: nothing to send
        yet (e.g. the delta is a marker)."""

    def flush_streaming(self, current_text: str) -> ReasoningDelta | None:
        """End of the stream: what the streaming steps held back of current_text (the whole
        output) as a possible partial marker. Call once after the last streaming step."""
        return None
