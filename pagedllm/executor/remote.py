"""RemoteExecutor: what the executors whose workers live elsewhere (processes, Ray actors) share.

Every call is one encoded WorkerCall sent to every rank (executor/messages.py); execute_model is
answered by rank 0 alone, and only it has a deadline. Subclasses move the bytes."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from pagedllm import envs
from pagedllm.executor.abstract import Executor
from pagedllm.executor.messages import encode_call, make_call


class RemoteExecutor(Executor):
    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        assert not kwargs, "worker calls take positional arguments"
        return self._call(method, args, reply_rank=None)

    def execute_model(self, scheduler_output):  # type: ignore[override]
        return self._call("execute_model", (scheduler_output,), reply_rank=0)[0]

    def _call(self, method: str, args: tuple, reply_rank: int | None) -> list[Any]:
        # NOTE: start-up calls (model load, a first kernel build) may take minutes; a step may
        # not, so only execute_model has a deadline
        timeout = envs.execute_model_timeout() if method == "execute_model" else None
        return self._send(method, encode_call(make_call(method, args, reply_rank)), reply_rank,
                          timeout)

    @abstractmethod
    def _send(self, method: str, data: bytes, reply_rank: int | None,
              timeout: float | None) -> list[Any]:
        """Send `data` to every rank; the results of `reply_rank` (None: every rank), in rank
        order. RuntimeError if a worker's call failed, WorkerDied if a rank is gone."""
