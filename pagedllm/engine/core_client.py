"""Clients of the engine core, one interface: in-process (offline, tests) now; the server's
multi-process client implements the same methods."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pagedllm.config import EngineConfig
from pagedllm.engine.messages import EngineCoreOutputs, EngineCoreRequest


class EngineCoreClient(ABC):
    @abstractmethod
    def add_request(self, request: EngineCoreRequest) -> None: ...

    @abstractmethod
    def abort_requests(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def finish_requests_stopped(self, request_ids: list[str]) -> None: ...

    @abstractmethod
    def get_output(self) -> EngineCoreOutputs: ...

    def shutdown(self) -> None:
        pass


class InprocClient(EngineCoreClient):
    """Runs the engine core in this process: get_output() runs one step."""

    def __init__(self, config: EngineConfig) -> None:
        from pagedllm.engine.core import EngineCore

        self.engine_core = EngineCore(config)

    def add_request(self, request: EngineCoreRequest) -> None:
        self.engine_core.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.engine_core.abort_requests(request_ids)

    def finish_requests_stopped(self, request_ids: list[str]) -> None:
        self.engine_core.finish_requests_stopped(request_ids)

    def get_output(self) -> EngineCoreOutputs:
        return self.engine_core.step()

    @property
    def num_kv_blocks(self) -> int:
        return self.engine_core.num_blocks
