"""The contract between the scheduler and the model runner, in plain data (no tensors).

The runner keeps per-request state across steps; each SchedulerOutput tells it what changed:
requests new to it (first scheduling, or resumed after preemption: all their tokens are resent),
blocks appended to requests it already has, and requests to drop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.lora.request import LoRARequest
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.multimodal.inputs import MultiModalFeature
from pagedllm.request import FinishReason
from pagedllm.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    """Tokens generated before a preemption (empty on first scheduling)."""
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    """Tokens already in the cache (prefix-cache hits), where this step's chunk starts."""
    lora_request: LoRARequest | None = None
    """The adapter the request runs under (None: the base model)."""
    mm_features: list[MultiModalFeature] | None = None
    """The prompt's images, for the runner's vision encoder (None: text only)."""
    encoder_prompt_token_ids: list[int] | None = None
    """Encoder-decoder models: the encoder's input (the runner encodes it once per scheduling)."""
    state_slot: int | None = None
    """Models with Mamba layers: the request's slot in the state cache (None: no states)."""


@dataclass
class CachedRequestData:
    """Requests the runner already holds, in parallel lists."""

    req_ids: list[str] = field(default_factory=list)
    new_block_ids: list[list[int]] = field(default_factory=list)
    """Blocks appended to each request's block table this step."""
    num_computed_tokens: list[int] = field(default_factory=list)
    """Where each request's chunk starts this step."""
    new_token_ids: list[list[int]] = field(default_factory=list)
    """Pipeline parallelism only (else empty): each request's tokens of this step's chunk.
    Only the last stage samples, so the earlier stages learn the sampled tokens here."""


@dataclass
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict[str, int]
    """Tokens to compute this step per request: 1 for a decode, a chunk for a prefill."""
    total_num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)
    """Requests finished, aborted or preempted since the last step: the runner drops them."""
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    """Draft tokens scheduled after each speculating request's last token (its scheduled
    count is 1 + the drafts); the runner verifies them this step."""
    structured_output_request_ids: list[str] = field(default_factory=list)
    """Requests whose next token is constrained this step; row i of grammar_bitmask is theirs."""
    grammar_bitmask: Any = None
    """numpy int32 [len(structured_output_request_ids), ceil(vocab / 32)]: bit t % 32 of word
    t // 32 set when token t is allowed (None when no request is constrained)."""
    lora_loads: list[LoRARequest] = field(default_factory=list)
    """Multi-LoRA: adapters the workers start reading into CPU memory (in the background; they
    report each in ModelRunnerOutput.lora_loaded)."""
    lora_drops: list[int] = field(default_factory=list)
    """Multi-LoRA: adapter ids whose CPU copy and slot the workers free (no request uses them)."""
    free_encoder_mm_hashes: list[str] = field(default_factory=list)
    """Vision-language models: image hashes whose encoder outputs the encoder cache evicted;
    the workers drop them before this step's chunks (core/encoder_cache_manager.py)."""

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class LogprobsLists:
    """Logprobs of several positions of one request.

    Row i: token_ids[i] = [chosen token, top-1, ..., top-k], logprobs[i] likewise, ranks[i] =
    rank of the chosen token (1 = most likely).
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]
    start_position: int = 0
    """Prompt logprobs only: the prompt position whose next token row 0 scores (a request
    recomputed after preemption delivers positions again; the receiver drops repeats)."""


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    sampled_token_ids: dict[str, list[int]]
    """New tokens per scheduled request; empty for a request still in the middle of its prefill."""
    logprobs: dict[str, LogprobsLists] = field(default_factory=dict)
    """For requests with sampling_params.logprobs set: one row per sampled token."""
    prompt_logprobs: dict[str, LogprobsLists] = field(default_factory=dict)
    """For requests with prompt_logprobs set: one row per prompt position computed this step
    whose next token is a prompt token (the chosen token is that next prompt token)."""
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    """Drafts proposed for each request's next step (speculative decoding)."""
    num_draft_tokens: dict[str, int] = field(default_factory=dict)
    """Requests that verified drafts this step: how many; sampled_token_ids then holds the
    accepted drafts plus one token of the target model's."""
    pooler_output: dict[str, list[float]] = field(default_factory=dict)
    """Task "embed": the raw pooled hidden state of each request whose prompt is now fully
    computed (such a request samples nothing and is finished by the engine core)."""
    lora_loaded: list[int] = field(default_factory=list)
    """Multi-LoRA: adapters whose background load finished since the last step (now in CPU
    memory, ready for a slot)."""
    lora_failed: dict[int, str] = field(default_factory=dict)
    """Multi-LoRA: adapters whose load failed, with the reason (their requests are aborted)."""
    num_lora_slot_evictions: int = 0
    """Multi-LoRA: resident adapters replaced in a slot by another during this step."""


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: LogprobsLists | None = None
    new_prompt_logprobs: LogprobsLists | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    pooling_output: list[float] | None = None
    """Embedding requests: the raw pooled hidden state (float32), with the finishing output."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineCoreOutputs:
    outputs: list[EngineCoreOutput] = field(default_factory=list)
    scheduler_stats: SchedulerStats | None = None
    timestamp: float = field(default_factory=time.time)
    engine_index: int = 0
    """The data-parallel engine core that produced them (set by the DP client)."""


@dataclass
class PoolingSchedulerOutput:
    """One step of an encoder-only model: whole prompts, embedded in one forward pass (no KV
    cache, nothing carried between steps)."""

    prompts: dict[str, list[int]]
    """req_id -> prompt token ids, in batch order."""
    token_type_ids: dict[str, list[int]] = field(default_factory=dict)
    """req_id -> segment ids, for the prompts that have them (the others: all 0)."""
    mm_features: dict[str, list[MultiModalFeature]] = field(default_factory=dict)
    """req_id -> the prompt's image, for a dual encoder's image prompts (CLIP, SigLIP)."""

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(len(prompt) for prompt in self.prompts.values())
