"""What every engine core is: the interface the in-process client and the engine-core process
drive, and the start-up they share (an executor with its workers, the KV cache it sized).

Two cores implement it: EngineCore (decoders: paged KV cache, token-budget scheduler) and
PoolingEngineCore (encoder-only models: whole prompts, no cache).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pagedllm.config import EngineConfig
from pagedllm.engine.messages import EngineCoreOutputs, EngineCoreRequest
from pagedllm.executor import make_executor
from pagedllm.metrics.stats import SchedulerStats
from pagedllm.metrics.step_profile import profiler_from_env


class EngineCoreBase(ABC):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.executor = make_executor(config)
        """The engine core's only handle on the workers and the model."""
        info = self.executor.kv_cache_info
        self.num_blocks = info.num_blocks
        """KV cache blocks the scheduler allocates from (0: no cache)."""
        self.kv_cache_bytes = info.num_bytes
        self.step_profiler = profiler_from_env()
        """Per-phase step timing (off unless PAGEDLLM_STEP_PROFILE or enabled by the caller)."""
        self.last_execute_seconds = 0.0
        """Wall time of the last step's model execution."""

    @abstractmethod
    def add_request(self, request: EngineCoreRequest) -> None:
        """Queue a request the input processor validated."""

    @abstractmethod
    def abort_requests(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        """Requests the output processor ended on a stop string."""

    @abstractmethod
    def has_unfinished_requests(self) -> bool: ...

    @abstractmethod
    def step(self) -> EngineCoreOutputs:
        """Schedule, execute on the workers, and report what each request produced."""

    @abstractmethod
    def make_stats(self) -> SchedulerStats: ...

    @abstractmethod
    def reset_prefix_cache(self) -> bool: ...

    def check_health(self) -> None:
        """Raise if a worker is gone (called while idle: a dead rank stops the engine core even
        when no step would run into it)."""
        self.executor.check_health()

    def shutdown(self) -> None:
        self.executor.shutdown()
