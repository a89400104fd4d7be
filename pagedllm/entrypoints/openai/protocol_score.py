"""Request and response models of vLLM's /score and /rerank (Jina's and Cohere's rerank shapes,
also served at /v1/rerank and /v2/rerank), and of /pooling."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import AliasChoices, Field

from pagedllm.entrypoints.openai.protocol import UsageInfo
from pagedllm.entrypoints.openai.protocol_base import MAX_INT32, OpenAIBaseModel, random_id


class ScoreRequest(OpenAIBaseModel):
    model: str | None = None
    text_1: str | list[str] = Field(validation_alias=AliasChoices("text_1", "queries",
                                                                  "data_1"))
    """The queries: one (scored against every text_2) or one per text_2. vLLM's newer names
    `queries` / `data_1` are accepted too."""
    text_2: str | list[str] = Field(validation_alias=AliasChoices("text_2", "documents",
                                                                  "data_2"))
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)


class ScoreData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("score"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class RerankRequest(OpenAIBaseModel):
    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]]
    """Texts, or Cohere/Jina objects with a `text`."""
    top_n: int = Field(0, ge=0, le=MAX_INT32)
    """The best n results (0: all), as vLLM."""
    return_documents: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankResult(OpenAIBaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(OpenAIBaseModel):
    total_tokens: int
    prompt_tokens: int


class RerankResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("rerank"))
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class PoolingData(OpenAIBaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float] | str


class PoolingResponse(OpenAIBaseModel):
    """vLLM's /pooling answer: the pooler's output per input (for an embedding model, the
    embedding /v1/embeddings returns)."""

    id: str = Field(default_factory=lambda: random_id("pool"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[PoolingData]
    usage: UsageInfo


class ClassificationRequest(OpenAIBaseModel):
    """vLLM's /classify: one text (or token ids) or a list of them."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    truncate_prompt_tokens: int | None = Field(None, ge=-1, le=MAX_INT32)
    add_special_tokens: bool = True
    user: str | None = None


class ClassificationData(OpenAIBaseModel):
    index: int
    label: str
    """The label with the highest score."""
    probs: list[float]
    """One activated score per label, in label-id order."""
    num_classes: int


class ClassificationResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("classify"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassificationData]
    usage: UsageInfo
