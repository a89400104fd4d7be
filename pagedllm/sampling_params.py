"""SamplingParams: how to pick each next token and when to stop; vLLM's fields and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class RequestOutputKind(Enum):
    CUMULATIVE = 0
    """Each output carries everything generated so far."""
    DELTA = 1
    """Each output carries only what is new since the last one (streaming)."""
    FINAL_ONLY = 2
    """Only the finished output is returned (offline batches)."""


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_FIELDS = ("n", "top_k", "seed", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
               "thinking_token_budget")
_GREEDY_EPS = 1e-5

CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
"""The kinds of constraint a StructuredOutputsParams can hold (exactly one per request)."""


@dataclass
class StructuredOutputsParams:
    """A constraint on the generated text (vLLM's StructuredOutputsParams): exactly one of
    json, regex, choice, grammar, json_object or structural_tag; the others are options."""

    json: str | dict | None = None
    """A JSON schema (dict or its JSON text)."""
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    """An EBNF grammar (GBNF, as llama.cpp and xgrammar read it)."""
    json_object: bool | None = None
    """Any JSON object."""
    structural_tag: str | None = None
    """xgrammar's structural tag, as JSON text."""
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        set_ = [k for k in CONSTRAINT_KINDS if getattr(self, k) not in (None, False)]
        if len(set_) != 1:
            raise ValueError(
                "structured outputs need exactly one of json, regex, choice, grammar, "
                f"json_object or structural_tag; got {set_ or 'none'}"
            )
        if self.choice is not None:
            if not self.choice or not all(isinstance(c, str) for c in self.choice):
                raise ValueError("structured outputs 'choice' must be a non-empty list of strings")
            self.choice = list(self.choice)

    @property
    def kind(self) -> str:
        """Which constraint this is: one of CONSTRAINT_KINDS."""
        return next(k for k in CONSTRAINT_KINDS if getattr(self, k) not in (None, False))


@dataclass
class SamplingParams:
    n: int = 1
    """Number of independent samples for the prompt."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p."""
    top_k: int | None = None
    """Keep the k most likely tokens; None, 0 or -1 disable it."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely token."""
    seed: int | None = None
    """Per-request seed: the same seed gives the same output whatever else is batched."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    """> 1 discourages tokens seen in prompt or output (divides positive logits)."""
    logit_bias: dict[int, float] | None = None
    max_tokens: int | None = 16
    """Most tokens to generate; None: up to max_model_len."""
    min_tokens: int = 0
    """EOS and stop token ids are suppressed until this many tokens are generated."""
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    """Top-k logprobs returned per generated token (plus the sampled token's)."""
    prompt_logprobs: int | None = None
    """Top-k logprobs returned per prompt token."""
    detokenize: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    """Constrain the output to a JSON schema, regex, choice or grammar."""
    allowed_token_ids: list[int] | None = None
    """Only these token ids may be sampled."""
    bad_words: list[str] | None = None
    """Words (each possibly several tokens) that must not be generated: the last token of a
    word is banned whenever the tokens before it were just generated (vLLM's semantics)."""
    thinking_token_budget: int | None = None
    """Reasoning models (with a reasoning parser): end the thinking after this many tokens by
    forcing the end-of-thinking token."""
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    _all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    _bad_words_token_ids: list[list[int]] | None = field(default=None, repr=False)
    """bad_words tokenized by the input processor (with and without a leading space)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is not None and self.top_k <= 0:
            if self.top_k not in (0, -1):
                raise ValueError(f"top_k must be -1, 0 (disable) or >= 1, got {self.top_k}")
            self.top_k = None
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = [int(t) for t in self.allowed_token_ids]
        if self.bad_words is not None:
            self.bad_words = [self.bad_words] if isinstance(self.bad_words, str) else list(
                self.bad_words)
        self._validate()
        self._all_stop_token_ids = set(self.stop_token_ids)

    def _validate(self) -> None:
        for name in _INT_FIELDS:  # past int64 nothing downstream can hold them (msgpack, torch)
            value = getattr(self, name)
            if value is not None and not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"{name} must fit in 64 bits, got {value}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"
            )
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if self.prompt_logprobs is not None and self.prompt_logprobs < 0:
            raise ValueError(f"prompt_logprobs must be >= 0, got {self.prompt_logprobs}")
        if any(not s for s in self.stop):  # type: ignore[union-attr]
            raise ValueError("stop strings must be non-empty")
        if self.thinking_token_budget is not None and self.thinking_token_budget < 0:
            raise ValueError(
                f"thinking_token_budget must be >= 0, got {self.thinking_token_budget}")
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids must not be empty")
        if self.bad_words is not None and any(not w.strip() for w in self.bad_words):
            raise ValueError("bad_words must be non-empty strings")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def all_stop_token_ids(self) -> set[int]:
        return self._all_stop_token_ids

    def clone(self) -> SamplingParams:
        import copy

        return copy.deepcopy(self)
