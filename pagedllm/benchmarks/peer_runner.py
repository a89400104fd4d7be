"""What every benchmark peer implements (peers.py, openvino_peer.py), apart from the factory that
picks them, so a peer module need not import the factory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from pagedllm.benchmarks.timing import TimedRun


@dataclass(frozen=True)
class BatchLimits:
    """Our engine's scheduler limits, given to a peer's continuous-batching scheduler (OpenVINO's)
    so both engines may batch as many requests and tokens per step."""

    max_num_seqs: int
    max_num_batched_tokens: int


class PeerRunner(ABC):
    name: str
    single_stream: bool = False
    """Runs one request at a time: bench latency compares it at batch size 1 only."""

    @abstractmethod
    def generate_timed(self, prompts: list[list[int]], output_lens: list[int]) -> TimedRun:
        """Generate output_lens[i] tokens after prompts[i], all of them."""

    def generate(self, prompts: list[list[int]], output_lens: list[int]) -> float:
        """generate_timed's wall seconds."""
        return self.generate_timed(prompts, output_lens).elapsed_s

    def describe(self) -> dict[str, Any]:
        """How the peer ran (pipeline, precision, threads...), for the JSON record."""
        return {}
