"""Scoring text pairs, shared by `LLM.score` and the /score and /rerank routes.

A cross-encoder (a one-label sequence classifier) reads each pair as ONE prompt, the tokenizer's
pair encoding `[CLS] text_1 [SEP] text_2 [SEP]` with its segment ids; its score is the sigmoid of
the logit. A bi-encoder (an embedding model) embeds each text alone; a pair's score is the cosine
similarity of the two embeddings. vLLM scores both kinds the same way.
"""

from __future__ import annotations

import math
from typing import Any

from pagedllm.config import ModelConfig


def pair_lists(text_1: str | list[str], text_2: str | list[str]) -> tuple[list[str], list[str]]:
    """vLLM's pairing: one text_1 scored against every text_2, or one text_1 per text_2."""
    queries = [text_1] if isinstance(text_1, str) else list(text_1)
    documents = [text_2] if isinstance(text_2, str) else list(text_2)
    if not queries:
        raise ValueError("text_1 must not be empty")
    if not documents:
        raise ValueError("nothing to score: text_2 is empty")
    if len(queries) == 1:
        queries = queries * len(documents)
    elif len(queries) != len(documents):
        raise ValueError(f"text_1 holds {len(queries)} texts and text_2 {len(documents)}: give "
                         f"one text_1 (scored against every text_2) or one per text_2")
    return queries, documents


def check_cross_encoder(config: ModelConfig) -> None:
    """Scoring with a classifier needs exactly one label (the relevance logit)."""
    assert config.classifier is not None
    if config.classifier.num_labels != 1:
        raise ValueError(f"{config.model} classifies into {config.classifier.num_labels} labels: "
                         f"scoring needs a cross-encoder (one label); use /classify")


def cross_encoder_prompt(tokenizer: Any, config: ModelConfig, text_1: str, text_2: str,
                         truncate_prompt_tokens: int | None = None) -> dict[str, Any]:
    """One pair -> a token prompt with segment ids. `truncate_prompt_tokens` (-1: the model's
    length) shortens the longer text first, transformers' "longest_first"; without it a pair
    longer than the model's length is the caller's error, as for any prompt."""
    if truncate_prompt_tokens is None:
        encoded = tokenizer(text_1, text_2)
    else:
        limit = config.max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
        if not 0 < limit <= config.max_model_len:
            raise ValueError(f"truncate_prompt_tokens must be -1 or in [1, {config.max_model_len}]"
                             f", got {truncate_prompt_tokens}")
        encoded = tokenizer(text_1, text_2, truncation="longest_first", max_length=limit)
    prompt: dict[str, Any] = {"prompt_token_ids": list(encoded["input_ids"])}
    # A one-type model (RoBERTa) has no segment embedding to pick: every token is type 0.
    if getattr(config.hf_config, "type_vocab_size", 1) > 1 and "token_type_ids" in encoded:
        prompt["token_type_ids"] = list(encoded["token_type_ids"])
    return prompt


def cosine(a: list[float], b: list[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0
