"""Messages in and out of the engine core (serializable plain data; cross the process boundary)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pagedllm.core.sched.output import LogprobsLists
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.pooling_params import PoolingParams
from pagedllm.request import FinishReason
from pagedllm.sampling_params import SamplingParams


@dataclass
class EngineCoreRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    """For n > 1 the output processor fans out n child requests with n == 1 each."""
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0
    pooling_params: PoolingParams | None = None
    """Set for an embedding request (task "embed"); sampling_params are then the defaults."""


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
