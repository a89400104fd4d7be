"""PoolerConfig: how a model's hidden states become one embedding per prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PoolingType = Literal["MEAN", "CLS", "LAST"]


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
