"""The engine core's one handle on the workers.

    EngineCore ──execute_model(SchedulerOutput)──▶ Executor ──▶ Worker (one per rank)
                                                              └▶ ModelRunner ─▶ model

The scheduler output goes to every worker; the first worker's ModelRunnerOutput is the answer
(with tensor parallelism every rank samples the same tokens). `collective_rpc` is for the rare
call every worker must see (start-up, profiling, cache reset).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.core.sched.output import ModelRunnerOutput, PoolingSchedulerOutput, SchedulerOutput
from pagedllm.worker.worker import KVCacheInfo


class StepFuture:
    """A step sent to the workers: result() waits for its ModelRunnerOutput (once; WorkerDied
    or RuntimeError where the step failed)."""

    def __init__(self, collect: Callable[[], ModelRunnerOutput]) -> None:
        self._collect: Callable[[], ModelRunnerOutput] | None = collect
        self._output: ModelRunnerOutput | None = None

    def result(self) -> ModelRunnerOutput:
        if self._collect is not None:
            collect, self._collect = self._collect, None
            self._output = collect()
        assert self._output is not None
        return self._output


def _raise(error: Exception) -> ModelRunnerOutput:
    raise error


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

    @property
    def max_concurrent_batches(self) -> int:
        """Steps the engine core may have in flight at once (vLLM's name): one per pipeline
        stage, so stage s runs batch i while stage s - 1 runs batch i + 1."""
        return self.config.parallel.pipeline_parallel_size

    def execute_model(
        self, scheduler_output: SchedulerOutput | PoolingSchedulerOutput
    ) -> ModelRunnerOutput:
        return self.collective_rpc("execute_model", (scheduler_output,))[0]

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> StepFuture:
        """Send a step and return without waiting for it (here: it runs at once, in this
        process). Steps complete in the order they were sent: each rank runs its calls in
        order."""
        try:
            output = self.execute_model(scheduler_output)
        except Exception as e:
            error = e
            return StepFuture(lambda: _raise(error))
        return StepFuture(lambda: output)

    def check_health(self) -> None:
        """Raise if a worker is gone (nothing to check when it lives in this process)."""

    def shutdown(self) -> None:
        """Stop the workers (nothing to do when they live in this process)."""
