"""The engine core's one handle on the workers.

    EngineCore ──execute_model(SchedulerOutput)──▶ Executor ──▶ Worker (one per rank)
                                                              └▶ ModelRunner ─▶ model

The scheduler output goes to every worker; the first worker's ModelRunnerOutput is the answer
(with tensor parallelism every rank samples the same tokens). `collective_rpc` is for the rare
call every worker must see (start-up, profiling, cache reset).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.core.sched.output import ModelRunnerOutput, PoolingSchedulerOutput, SchedulerOutput
from pagedllm.worker.worker import KVCacheInfo


class Executor(ABC):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._init_workers()
        try:
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
            infos: list[KVCacheInfo] = self.collective_rpc("initialize_cache")
        except BaseException:
            self.shutdown()  # worker processes or actors must not outlive a failed start
            raise
        # NOTE: every rank plans from its own free memory; the smallest cache bounds them all.
        self.kv_cache_info = min(infos, key=lambda info: info.num_blocks)
        """The cache the scheduler plans with."""

    @abstractmethod
    def _init_workers(self) -> None:
        """Create the workers (processes, actors, or one in this process)."""

    @abstractmethod
    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        """Call `Worker.<method>(*args, **kwargs)` on every worker; their results by rank."""

    def execute_model(
        self, scheduler_output: SchedulerOutput | PoolingSchedulerOutput
    ) -> ModelRunnerOutput:
        return self.collective_rpc("execute_model", (scheduler_output,))[0]

    def check_health(self) -> None:
        """Raise if a worker is gone (nothing to check when it lives in this process)."""

    def shutdown(self) -> None:
        """Stop the workers (nothing to do when they live in this process)."""
