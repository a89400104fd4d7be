"""ParallelConfig: how the model is split over ranks, where the ranks run, and how many engine
cores serve behind one front end (vLLM's names)."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTOR_BACKENDS = ("uni", "mp", "ray")
DP_ROUTING_POLICIES = ("prefix_aware", "least_loaded")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    """Ranks each layer's weights are split over (heads, MLP columns, vocabulary)."""
    pipeline_parallel_size: int = 1
    """Stages the decoder layers are split into; hidden states pass from stage to stage, with
    as many steps (micro-batches) in flight as stages."""
    data_parallel_size: int = 1
    """Engine cores behind one front end, each its own process with its own executor and KV
    cache; each new request goes to one of them (engine/dp_router.py)."""
    data_parallel_routing: str = "prefix_aware"
    """How a new request picks its core: "least_loaded" (lowest load score), or "prefix_aware"
    (the core its prompt's longest known block prefix went to, unless that core is much more
    loaded than the least loaded one)."""
    enable_expert_parallel: bool = False
    """MoE layers: each rank holds whole experts (E / tp of them) instead of every expert's
    1/tp slice; attention stays tensor-parallel."""
    distributed_executor_backend: str | None = None
    """Where the ranks run: "uni" (one worker in the engine core's process), "mp" (one process
    per rank on this machine) or "ray" (Ray actors, possibly on other machines); None: "uni" for
    one rank, "mp" for several."""
    ray_address: str | None = None
    """The Ray cluster to join ("ray" backend); None: RAY_ADDRESS, else a local Ray started
    for the engine."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data_parallel_routing not in DP_ROUTING_POLICIES:
            raise ValueError(
                f"data_parallel_routing must be one of {', '.join(DP_ROUTING_POLICIES)}, got "
                f"{self.data_parallel_routing!r}"
            )
        backend = self.distributed_executor_backend
        if backend is not None and backend not in EXECUTOR_BACKENDS:
            raise ValueError(
                f"distributed_executor_backend must be one of {EXECUTOR_BACKENDS}, got {backend!r}"
            )
        if backend == "uni" and self.world_size > 1:
            raise ValueError(
                f"distributed_executor_backend 'uni' runs one rank; world size is "
                f"{self.world_size} (use 'mp' or 'ray')"
            )

    @property
    def world_size(self) -> int:
        """Ranks of one engine core (tensor x pipeline; data-parallel cores are separate)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def executor_backend(self) -> str:
        """The backend in effect (the default resolved)."""
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        return "uni" if self.world_size == 1 else "mp"
