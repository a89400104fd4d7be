"""Plain stats records the engine core produces each step (exported by the server's metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PrefixCacheStats:
    queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    hits: int = 0
    """Of those, tokens found cached."""
    reset: bool = False


@dataclass
class SpecDecodingStats:
    """Speculative decoding during one step (vLLM's counters)."""

    num_drafts: int = 0
    """Requests that verified a draft."""
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    """Index i: drafts whose token at position i was accepted."""

    def observe(self, num_draft_tokens: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        if len(self.num_accepted_tokens_per_pos) < num_draft_tokens:
            self.num_accepted_tokens_per_pos.extend(
                [0] * (num_draft_tokens - len(self.num_accepted_tokens_per_pos)))
        for i in range(num_accepted):
            self.num_accepted_tokens_per_pos[i] += 1


@dataclass
class LoRAStats:
    """Multi-LoRA adapter traffic during one step, and the adapters in use now."""

    num_loads: int = 0
    """Adapters read from disk into CPU memory."""
    num_cpu_evictions: int = 0
    """Adapters dropped from CPU memory to make room for another."""
    num_slot_evictions: int = 0
    """Resident adapters replaced in a slot by another."""
    running_lora_adapters: list[str] = field(default_factory=list)
    waiting_lora_adapters: list[str] = field(default_factory=list)
    max_lora: int = 0


@dataclass
class SchedulerStats:
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of KV blocks in use (0..1)."""
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    prefix_cache_stats: PrefixCacheStats | None = None
    num_preemptions: int = 0
    """Preemptions during this step."""
    num_prompt_tokens: int = 0
    """Prompt tokens computed during this step (cache hits excluded)."""
    num_generation_tokens: int = 0
    """Tokens generated during this step."""
    spec_decoding_stats: SpecDecodingStats | None = None
    """Speculative decoding during this step (None: no draft was verified)."""
    lora_stats: LoRAStats | None = None
    """Multi-LoRA engines: adapter loads, evictions and the adapters in use."""
