"""SpeculativeConfig: vLLM's `--speculative-config` (JSON) / `LLM(speculative_config={...})`.

Each decode step a proposer drafts up to `num_speculative_tokens` tokens per request; the model
verifies them in the same forward (draft positions are ordinary query rows over the paged cache)
and keeps the longest prefix the target model agrees with, plus one token of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.config.json_options import json_options

METHODS = ("ngram", "suffix", "draft_model")
"""Implemented proposers. vLLM's others ("eagle", "medusa", ...) are refused."""


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 4
    """Most tokens drafted per request and step (for every method)."""
    prompt_lookup_min: int = 2
    """ngram: the shortest suffix of the sequence looked up earlier in it (single tokens
    match everywhere in free text and draft mostly junk)."""
    prompt_lookup_max: int = 4
    """ngram: the longest suffix looked up (longer matches are tried first)."""
    model: str | None = None
    """draft_model: the draft model (a directory, .gguf file or name the loader accepts), a
    smaller model with the target's tokenizer."""
    quantization: str | None = None
    """draft_model: the draft's own weight quantization (as --quantization; None: what its
    checkpoint holds)."""
    draft_model_config: Any = field(default=None, repr=False, compare=False)
    """draft_model: its resolved ModelConfig (set by EngineArgs, never by the user)."""
    suffix_decoding_max_tree_depth: int = 24
    """suffix: depth of the suffix trees, which bounds match length + draft length (and the
    per-step cost)."""
    suffix_decoding_max_cached_requests: int = 10000
    """suffix: earlier requests whose outputs are kept for drafting, the oldest evicted first
    (0: no cross-request cache; each request's own prompt and output are still used)."""
    suffix_decoding_max_spec_factor: float = 1.0
    """suffix: at most this many draft tokens per token of the matched suffix."""
    suffix_decoding_min_token_prob: float = 0.1
    """suffix: draft only while the continuation's estimated probability (from occurrence
    counts) stays at least this."""
    disable_by_batch_size: int | None = 4
    """No drafts while this many requests or more are in the batch: the forward is then
    compute-bound and verifying drafts costs more than it saves (None: never). Measured with
    `pagedllm bench speculative` (SmolLM2 Q4_1, 2 Zen 5 cores, drafting at every size vs none):
    1.82x at batch 1, 1.11x at 2, 0.92x at 4."""
    draft_token_cost: float | None = None
    """What verifying one draft token costs, as a fraction of a one-token decode step; the
    draft length of each request maximizes its expected tokens per unit of cost given its
    recent acceptance. None: measured at start-up on the model (on 2 Zen 5 cores, SmolLM2:
    ~0.25 with Q4_1 weights, ~0.09 in float32)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative method {self.method!r} is not available in pagedllm; "
                f"supported: {', '.join(METHODS)}")
        if self.method == "draft_model" and not self.model:
            raise ValueError('speculative method "draft_model" needs "model" (the draft model)')
        if self.method != "draft_model" and (self.model or self.quantization):
            raise ValueError(f'"model" and "quantization" are draft_model options, not '
                             f'{self.method}\'s')
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be >= 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if self.suffix_decoding_max_tree_depth < 1:
            raise ValueError("suffix_decoding_max_tree_depth must be >= 1, "
                             f"got {self.suffix_decoding_max_tree_depth}")
        if self.suffix_decoding_max_cached_requests < 0:
            raise ValueError("suffix_decoding_max_cached_requests must be >= 0, "
                             f"got {self.suffix_decoding_max_cached_requests}")
        if self.suffix_decoding_max_spec_factor <= 0:
            raise ValueError("suffix_decoding_max_spec_factor must be > 0, "
                             f"got {self.suffix_decoding_max_spec_factor}")
        if not 0 <= self.suffix_decoding_min_token_prob <= 1:
            raise ValueError("suffix_decoding_min_token_prob must be in [0, 1], "
                             f"got {self.suffix_decoding_min_token_prob}")
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise ValueError("disable_by_batch_size must be >= 1 (or null)")
        if self.draft_token_cost is not None and self.draft_token_cost <= 0:
            raise ValueError("draft_token_cost must be > 0")

    @classmethod
    def parse(cls, value: str | dict[str, Any] | SpeculativeConfig | None
              ) -> SpeculativeConfig | None:
        """From the CLI's JSON text, a dict or an instance; None stays None (no speculation)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        value = json_options(cls, value, "--speculative-config", "speculative",
                             internal=frozenset({"draft_model_config"}))
        return cls(**value)
