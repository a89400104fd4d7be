"""PoolingParams: what an embedding request asks of the pooled hidden state (vLLM's fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class PoolingParams:
    normalize: bool | None = None
    """L2-normalize the embedding; None: the model's default (its sentence-transformers
    Normalize module, or True for a decoder served with task "embed")."""
    dimensions: int | None = None
    """Keep the first `dimensions` values (Matryoshka models only); None: all of them."""
    task: Literal["embed", "classify"] = "embed"
    """The pooling task: "embed" (a vector) or "classify" (label scores; sequence classifiers
    and cross-encoders). It must be the task the model is served for."""

    def __post_init__(self) -> None:
        if self.task not in ("embed", "classify"):
            raise ValueError(f"pooling task must be 'embed' or 'classify', got {self.task!r}")
        if self.dimensions is not None and (
            isinstance(self.dimensions, bool) or not isinstance(self.dimensions, int)
            or self.dimensions < 1
        ):
            raise ValueError(f"dimensions must be a positive integer, got {self.dimensions!r}")

    def clone(self) -> PoolingParams:
        return PoolingParams(self.normalize, self.dimensions, self.task)


def finish_embedding(
    pooled: list[float], params: PoolingParams, default_normalize: bool
) -> list[float]:
    """The raw pooled vector -> the embedding the user asked for: truncate, then normalize."""
    vector = pooled[: params.dimensions] if params.dimensions is not None else list(pooled)
    normalize = default_normalize if params.normalize is None else params.normalize
    if not normalize:
        return vector
    # NOTE: same epsilon as torch.nn.functional.normalize.
    norm = max(math.sqrt(math.fsum(x * x for x in vector)), 1e-12)
    return [x / norm for x in vector]


def activate_logits(logits: list[float], activation: str) -> list[float]:
    """A classifier's raw logits -> its label scores: softmax over the labels, or an
    independent sigmoid per label (one-label cross-encoders, multi-label heads)."""
    if activation == "sigmoid":
        return [_sigmoid(x) for x in logits]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def _sigmoid(x: float) -> float:
    # NOTE: the two forms keep exp() from overflowing for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
