"""PoolerConfig: how a model's hidden states become one embedding per prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PoolingType = Literal["MEAN", "CLS", "LAST"]
ClassifierActivation = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class PoolerConfig:
    pooling_type: PoolingType = "LAST"
    """MEAN: average of the prompt's tokens; CLS: its first token; LAST: its last token."""
    normalize: bool = True
    """L2-normalize by default (a request's PoolingParams.normalize overrides it)."""
    matryoshka: bool = False
    """The model was trained so that prefixes of its embedding are embeddings (`dimensions`)."""

    def __post_init__(self) -> None:
        if self.pooling_type not in ("MEAN", "CLS", "LAST"):
            raise ValueError(
                f"pooling_type must be MEAN, CLS or LAST, got {self.pooling_type!r}"
            )


@dataclass(frozen=True)
class ClassifierConfig:
    """A sequence-classification head (BertForSequenceClassification, cross-encoders): the
    [CLS] state -> one logit per label; requests get the activated scores."""

    labels: tuple[str, ...]
    """id2label, in label-id order."""
    activation: ClassifierActivation = "softmax"
    """softmax over the labels; sigmoid for one label (a cross-encoder's relevance score) and
    for multi-label problems, as transformers' own loss choice implies."""

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {self.activation!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)
