"""RemoteExecutor: what the executors whose workers live elsewhere (processes, Ray actors) share.

Every call is one encoded WorkerCall sent to every rank (executor/messages.py); execute_model is
answered by one rank alone (the first rank of the last pipeline stage: only it samples), and
only it has a deadline. Subclasses move the bytes.

With pipeline parallelism the engine core keeps up to pipeline_parallel_size steps in flight
(execute_model_async): a step is sent to every rank at once, stage 0 starts it while the later
stages still run the steps before it, and its reply is read when the engine core needs it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from pagedllm import envs
from pagedllm.executor.abstract import Executor, StepFuture
from pagedllm.executor.messages import encode_call, make_call


class RemoteExecutor(Executor):
    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        assert not kwargs, "worker calls take positional arguments"
        return self._call(method, args, reply_rank=None)()

    @property
    def _answering_rank(self) -> int:
        """The rank whose ModelRunnerOutput the engine core reads: the last stage's first."""
        parallel = self.config.parallel
        return parallel.world_size - parallel.tensor_parallel_size

    def execute_model(self, scheduler_output):  # type: ignore[override]
        return self.execute_model_async(scheduler_output).result()

    def execute_model_async(self, scheduler_output) -> StepFuture:  # type: ignore[override]
        collect = self._call("execute_model", (scheduler_output,), self._answering_rank)
        return StepFuture(lambda: collect()[0])

    def _call(self, method: str, args: tuple, reply_rank: int | None) -> Callable[[], list[Any]]:
        # NOTE: start-up calls (model load, a first kernel build) may take minutes; a step may
        # not, so only execute_model has a deadline
        timeout = envs.execute_model_timeout() if method == "execute_model" else None
        return self._submit(method, encode_call(make_call(method, args, reply_rank)),
                            reply_rank, timeout)

    @abstractmethod
    def _submit(self, method: str, data: bytes, reply_rank: int | None,
                timeout: float | None) -> Callable[[], list[Any]]:
        """Send `data` to every rank without waiting for the reply; the returned function waits
        for the results of `reply_rank` (None: every rank), in rank order, and raises
        RuntimeError if a worker's call failed, WorkerDied if a rank is gone. Replies are
        collected in the order the calls were submitted."""
