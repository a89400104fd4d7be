"""User-facing results of generation: RequestOutput with one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """Log probability of one token, its rank in the distribution and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: token id -> Logprob (the chosen token and the top-k alternatives).
SampleLogprobs = list[dict[int, Logprob]]
# One entry per prompt position; the first is None (nothing predicts the first token).
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    """"stop", "length", "abort" or None while running."""
    stop_reason: int | str | None = None
    """The stop string or stop token id that ended the sample, if any."""

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EmbeddingOutput:
    embedding: list[float]
    """The pooled (truncated, normalized as asked) hidden state of the prompt."""

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """The result of one embedding request (vLLM's PoolingRequestOutput for task "embed")."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True
    num_cached_tokens: int = 0


@dataclass
class ClassificationOutput:
    probs: list[float]
    """One activated score per label (softmax, or sigmoid for one-label/multi-label heads)."""

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ClassificationRequestOutput:
    """The result of one classification request (vLLM's PoolingRequestOutput for "classify")."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: ClassificationOutput
    finished: bool = True
    num_cached_tokens: int = 0


@dataclass
class ScoringOutput:
    score: float
    """A cross-encoder's relevance score of the pair, or a bi-encoder's cosine similarity."""


@dataclass
class ScoringRequestOutput:
    """One (text_1, text_2) pair's score from LLM.score."""

    request_id: str
    prompt_token_ids: list[int]
    """The pair's tokens (a cross-encoder) or text_2's (a bi-encoder)."""
    outputs: ScoringOutput
    finished: bool = True


PoolingRequestOutput = EmbeddingRequestOutput | ClassificationRequestOutput
