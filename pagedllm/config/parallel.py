"""ParallelConfig: how the model is split over ranks, where the ranks run, and how many engine
cores serve behind one front end (vLLM's names)."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTOR_BACKENDS = ("uni", "mp", "ray")
DP_ROUTING_POLICIES = ("prefix_aware", "least_loaded")
DP_BACKENDS = ("mp", "ray")


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
    data_parallel_backend: str = "mp"
    """Where the data-parallel engine cores run: "mp" (processes on this machine) or "ray" (Ray
    actors placed by a placement group, possibly on other machines: engine/ray_core.py)."""
    data_parallel_size_local: int | None = None
    """The front end's: engine cores on this machine (with "ray", the first this many are placed
    on the API server's node, the others anywhere; None: mp all, ray wherever Ray puts them). In
    a core's own config: the engine cores on its machine (CPU binding shares the CPUs out)."""
    data_parallel_rank_local: int = 0
    """In a core's own config: its index among the engine cores on its machine."""
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
        if self.data_parallel_backend not in DP_BACKENDS:
            raise ValueError(f"data_parallel_backend must be one of {', '.join(DP_BACKENDS)}, "
                             f"got {self.data_parallel_backend!r}")
        local = self.data_parallel_size_local
        if local is not None and not 0 <= self.data_parallel_rank_local < max(1, local):
            raise ValueError(f"data_parallel_rank_local {self.data_parallel_rank_local} is not "
                             f"below data_parallel_size_local {local}")
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

    @property
    def local_ranks(self) -> tuple[int, int]:
        """(index of this engine core's rank 0 among the ranks on its machine, ranks on the
        machine), where this core's ranks run as processes here (uni/mp): what CPU binding
        shares the allowed CPUs over. Ranks placed by the Ray executor are not counted."""
        cores = self.data_parallel_size_local or 1
        return self.data_parallel_rank_local * self.world_size, cores * self.world_size
