"""Executors: how many workers there are and where they run, hidden from the engine core."""

from pagedllm.config import EngineConfig
from pagedllm.executor.abstract import Executor
from pagedllm.executor.uniproc_executor import UniProcExecutor


def make_executor(config: EngineConfig) -> Executor:
    """The executor of `config.parallel.executor_backend` (vLLM's
    `--distributed-executor-backend`): "uni" one worker in this process, "mp" a worker process
    per rank, "ray" a Ray actor per rank."""
    backend = config.parallel.executor_backend
    if backend == "mp":
        from pagedllm.executor.multiproc_executor import MultiprocExecutor

        return MultiprocExecutor(config)
    if backend == "ray":
        from pagedllm.executor.ray_executor import RayDistributedExecutor

        return RayDistributedExecutor(config)
    return UniProcExecutor(config)


__all__ = ["Executor", "UniProcExecutor", "make_executor"]
