"""The xgrammar backend: constraints compiled by xgrammar against the model's tokenizer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from pagedllm.structured_output.backend import (
    ConstraintKey,
    StructuredOutputBackend,
    StructuredOutputGrammar,
)


def choice_grammar(choices: list[str]) -> str:
    """EBNF that matches exactly one of the strings."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def build_grammar(key: ConstraintKey) -> Any:
    """The constraint as an xgrammar Grammar (parsing only: no tokenizer involved). Raises
    RuntimeError/ValueError with xgrammar's reason when the constraint is invalid."""
    import xgrammar as xgr

    if key.kind == "json":
        return xgr.Grammar.from_json_schema(key.spec, any_whitespace=key.any_whitespace,
                                            strict_mode=True)
    if key.kind == "json_object":
        # OpenAI's json_object is an object (xgrammar's built-in JSON grammar also takes
        # arrays) with any members; as a schema it honours disable_any_whitespace too.
        return xgr.Grammar.from_json_schema('{"type": "object"}', strict_mode=False,
                                            any_whitespace=key.any_whitespace)
    if key.kind == "regex":
        return xgr.Grammar.from_regex(key.spec)
    if key.kind == "choice":
        return xgr.Grammar.from_ebnf(choice_grammar(json.loads(key.spec)))
    if key.kind == "grammar":
        return xgr.Grammar.from_ebnf(key.spec)
    if key.kind == "structural_tag":
        return xgr.Grammar.from_structural_tag(key.spec)
    raise ValueError(f"unknown constraint kind {key.kind!r}")


class XgrammarGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept_tokens(self, token_ids: Sequence[int]) -> bool:
        for token_id in token_ids:
            if not self.matcher.accept_token(int(token_id)):
                return False
        return True

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        import torch

        # xgrammar writes into a torch tensor; torch.from_numpy shares the memory.
        self.matcher.fill_next_token_bitmask(torch.from_numpy(bitmask), row)

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)


class XgrammarBackend(StructuredOutputBackend):
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int],
                 num_threads: int = 2) -> None:
        import xgrammar as xgr

        super().__init__(vocab_size, stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
        # NOTE: our own LRU (manager.py) bounds the cache; xgrammar's would be a second copy.
        self.compiler = xgr.GrammarCompiler(info, max_threads=num_threads, cache_enabled=False)

    def compile(self, key: ConstraintKey) -> Any:
        return self.compiler.compile_grammar(build_grammar(key))

    def new_grammar(self, compiled: Any) -> XgrammarGrammar:
        import xgrammar as xgr

        return XgrammarGrammar(
            xgr.GrammarMatcher(compiled))
