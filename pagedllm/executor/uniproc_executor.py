"""UniProcExecutor: one Worker in the engine core's own process (world size 1)."""

from __future__ import annotations

from typing import Any

from pagedllm.executor.abstract import Executor
from pagedllm.worker.worker import Worker


class UniProcExecutor(Executor):
    def _init_workers(self) -> None:
        self.driver_worker = Worker(self.config, rank=0)

    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        return [getattr(self.driver_worker, method)(*args, **(kwargs or {}))]
