"""SchedulerConfig: how much work one engine step may take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 128
    """Most requests in one step."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step (decode tokens + prefill chunks)."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps so decodes are not stalled behind them."""
    long_prefill_token_threshold: int | None = None
    """Cap on the prefill chunk one request may take in a step (None: no cap)."""
    policy: str = "fcfs"
    """Waiting-queue order: "fcfs" or "priority" (lower value first, then arrival)."""
    encoder_cache_size: int | None = None
    """Vision-language models: the encoder cache's budget in embedding tokens (vLLM's name):
    how many image placeholder tokens' encoder outputs the worker may hold at once
    (core/encoder_cache_manager.py). None: max(max_num_batched_tokens, max_model_len), which
    holds every image any admissible prompt can carry, chunked or not."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.encoder_cache_size is not None and self.encoder_cache_size < 1:
            raise ValueError(f"encoder_cache_size must be >= 1, got {self.encoder_cache_size}")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"policy must be 'fcfs' or 'priority', got {self.policy!r}")

    def resolved_encoder_cache_size(self, max_model_len: int) -> int:
        if self.encoder_cache_size is not None:
            return self.encoder_cache_size
        return max(self.max_num_batched_tokens, max_model_len)
