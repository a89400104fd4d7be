"""Executors: how many workers there are and where they run, hidden from the engine core."""

from pagedllm.config import EngineConfig
from pagedllm.executor.abstract import Executor
from pagedllm.executor.uniproc_executor import UniProcExecutor


def make_executor(config: EngineConfig) -> Executor:
    """The executor for the config: one worker in this process until the distributed issue adds
    the multiprocess and Ray executors (vLLM's `--distributed-executor-backend`)."""
    return UniProcExecutor(config)


__all__ = ["Executor", "UniProcExecutor", "make_executor"]
