"""ParallelConfig: how the engine spreads over processes.

NOTE (merge): the tensor/pipeline fields belong to the distributed executor (the `tp` branch);
this file's data-parallel block is the `dp` branch's. Keep the two blocks apart when merging.
"""

from __future__ import annotations

from dataclasses import dataclass

DP_ROUTING_POLICIES = ("prefix_aware", "least_loaded")


@dataclass(frozen=True)
class ParallelConfig:
    # ---- data parallelism (engine/dp_client.py) -----------------------------------------------
    data_parallel_size: int = 1
    """Engine cores behind one front end, each its own process with its own executor and KV
    cache; each new request goes to one of them (engine/dp_router.py)."""
    data_parallel_routing: str = "prefix_aware"
    """How a new request picks its core: "least_loaded" (lowest load score), or "prefix_aware"
    (the core its prompt's longest known block prefix went to, unless that core is much more
    loaded than the least loaded one)."""

    def __post_init__(self) -> None:
        if self.data_parallel_size < 1:
            raise ValueError(f"data_parallel_size must be >= 1, got {self.data_parallel_size}")
        if self.data_parallel_routing not in DP_ROUTING_POLICIES:
            raise ValueError(
                f"data_parallel_routing must be one of {', '.join(DP_ROUTING_POLICIES)}, got "
                f"{self.data_parallel_routing!r}"
            )
