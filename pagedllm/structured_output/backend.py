"""The grammar backend seam: a backend compiles a constraint into a grammar; a grammar tracks
one request's position (accepting tokens) and writes which tokens may come next into a bitmask.

Bitmasks are int32 arrays of ceil(vocab_size / 32) words per row, bit t % 32 of word t // 32
set when token t is allowed (xgrammar's layout, which the sampler side unpacks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pagedllm.sampling_params import StructuredOutputsParams


@dataclass(frozen=True)
class ConstraintKey:
    """What identifies a compiled grammar: the constraint and the options that change it."""

    kind: str
    """One of sampling_params.CONSTRAINT_KINDS."""
    spec: str
    """The constraint as canonical text (a schema as sorted JSON, a regex, a grammar...)."""
    any_whitespace: bool = True


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(num_rows: int, vocab_size: int) -> np.ndarray:
    """[num_rows, ceil(V / 32)] int32, every token allowed."""
    return np.full((num_rows, bitmask_words(vocab_size)), -1, dtype=np.int32)


def set_only_token(bitmask: np.ndarray, row: int, token_id: int) -> None:
    """Allow exactly one token in a bitmask row (a forced token)."""
    bitmask[row] = 0
    bitmask[row, token_id // 32] = np.int32(np.uint32(1 << (token_id % 32)).view(np.int32))


class StructuredOutputGrammar(ABC):
    """One request's matcher over a compiled grammar."""

    @abstractmethod
    def accept_tokens(self, token_ids: Sequence[int]) -> bool:
        """Advance by these tokens; False (and no advance past it) at the first token the
        grammar does not allow."""

    @abstractmethod
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into bitmask[row]."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar has accepted a stop token: nothing more may be generated."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens (rejected speculative tokens)."""

    def count_acceptable(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of token_ids the grammar allows from here; the matcher is
        left as it was."""
        count = 0
        for token_id in token_ids:
            if not self.accept_tokens([token_id]):
                break
            count += 1
        if count:
            self.rollback(count)
        return count

    def fill_bitmasks_along(self, bitmask: np.ndarray, row: int, token_ids: Sequence[int]
                            ) -> None:
        """Rows row .. row + len(token_ids): the tokens allowed next, then after each of
        token_ids in turn (drafts the grammar allows, count_acceptable); the matcher is left
        as it was."""
        for j, token_id in enumerate(token_ids):
            self.fill_bitmask(bitmask, row + j)
            accepted = self.accept_tokens([token_id])
            assert accepted, "drafts are cut to what the grammar allows"
        self.fill_bitmask(bitmask, row + len(token_ids))
        if token_ids:
            self.rollback(len(token_ids))


class StructuredOutputBackend(ABC):
    def __init__(self, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(stop_token_ids)

    @abstractmethod
    def compile(self, key: ConstraintKey) -> object:
        """The constraint compiled against this tokenizer (thread-safe; may take long)."""

    @abstractmethod
    def new_grammar(self, compiled: object) -> StructuredOutputGrammar:
        """A fresh matcher at the start of a compiled grammar (cheap)."""


def constraint_key(params: StructuredOutputsParams, disable_any_whitespace: bool = False
                   ) -> ConstraintKey:
    """The cache key of a request's constraint; the config's default may turn whitespace off."""
    import json

    kind = params.kind
    value = getattr(params, kind)
    if kind == "json":
        # NOTE: not sort_keys: the schema's property order is the output's order.
        spec = json.dumps(json.loads(value) if isinstance(value, str) else value,
                          ensure_ascii=False)
    elif kind == "choice":
        spec = json.dumps(list(value), ensure_ascii=False)
    elif kind == "json_object":
        spec = ""
    else:
        spec = str(value)
    any_whitespace = not (params.disable_any_whitespace or disable_any_whitespace)
    return ConstraintKey(kind, spec, any_whitespace)
