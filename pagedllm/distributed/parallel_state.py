"""The process's place in the distributed world: the world group and the tensor-parallel group.

    world  = pipeline stages x tensor-parallel ranks (one engine core's workers)
    TP group: ranks [s*tp, (s+1)*tp) of stage s
    PP group: ranks r, r+tp, ..., r+(pp-1)*tp (the r-th TP rank of every stage, in stage order)

NOTE: process groups are process-wide by nature (torch.distributed keeps its own global
state), so this module holds them as module state too, set once when a worker starts and
cleared by `destroy_model_parallel`; nothing per step lives here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pagedllm.logger import init_logger

logger = init_logger(__name__)


@dataclass
class CollectiveStats:
    """Time this rank spent in the group's collectives (waiting for its peers included)."""

    calls: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class GroupCoordinator:
    """One process group and this process's rank in it."""

    ranks: tuple[int, ...]
    """Global ranks of the group, in group-rank order."""
    rank_in_group: int
    group: dist.ProcessGroup | None
    """None for a group of one (no communication)."""
    stats: CollectiveStats = field(default_factory=CollectiveStats, compare=False)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the group's ranks (in place where x is contiguous)."""
        if self.group is None:
            return x
        x = x.contiguous()
        start = time.perf_counter()
        dist.all_reduce(x, group=self.group)
        self._count(start)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The ranks' x concatenated along `dim`, in rank order."""
        if self.group is None:
            return x
        parts = [torch.empty_like(x) for _ in self.ranks]
        start = time.perf_counter()
        dist.all_gather(parts, x.contiguous(), group=self.group)
        self._count(start)
        return torch.cat(parts, dim=dim)

    @property
    def is_first_rank(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_last_rank(self) -> bool:
        return self.rank_in_group == self.world_size - 1

    def send_next(self, x: torch.Tensor) -> None:
        """To the next rank of the group (pipeline: the next stage)."""
        start = time.perf_counter()
        dist.send(x.contiguous(), dst=self.ranks[self.rank_in_group + 1])
        self._count(start)

    def recv_prev(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """From the previous rank of the group."""
        x = torch.empty(shape, dtype=dtype)
        start = time.perf_counter()
        dist.recv(x, src=self.ranks[self.rank_in_group - 1])
        self._count(start)
        return x

    def _count(self, start: float) -> None:
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start


_TP: GroupCoordinator | None = None
_PP: GroupCoordinator | None = None
_EP: GroupCoordinator | None = None
"""The expert-parallel group (--enable-expert-parallel): the TP group's ranks, each holding
whole experts instead of every expert's slice; None when experts are split TP-style."""


def backend_for_device(device: str) -> str:
    """nccl between CUDA devices, gloo otherwise (CPU)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init_distributed_environment(
    world_size: int, rank: int, distributed_init_method: str, backend: str
) -> None:
    """Join the world (every rank calls it with the same init method, e.g. tcp://host:port)."""
    if world_size == 1 or dist.is_initialized():
        return
    dist.init_process_group(
        backend=backend, init_method=distributed_init_method, world_size=world_size, rank=rank
    )
    logger.info("rank %d of %d joined the world (%s, %s)", rank, world_size, backend,
                distributed_init_method)


def initialize_model_parallel(
    tensor_parallel_size: int, enable_expert_parallel: bool = False,
    pipeline_parallel_size: int = 1,
) -> None:
    """Form the tensor- and pipeline-parallel groups (after init_distributed_environment); with
    enable_expert_parallel the TP ranks spread MoE experts among them."""
    global _TP, _EP, _PP
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if world_size % tensor_parallel_size:
        raise ValueError(f"world size {world_size} is not a multiple of tensor_parallel_size="
                         f"{tensor_parallel_size}")
    mine: GroupCoordinator | None = None
    for start in range(0, world_size, tensor_parallel_size):
        ranks = tuple(range(start, start + tensor_parallel_size))
        # NOTE: every rank creates every group, in the same order (torch.distributed's rule)
        group = dist.new_group(list(ranks)) if tensor_parallel_size > 1 else None
        if rank in ranks:
            mine = GroupCoordinator(ranks, ranks.index(rank), group)
    _TP = mine
    _EP = mine if enable_expert_parallel else None
    tp = tensor_parallel_size
    for first in range(tp):
        ranks = tuple(range(first, world_size, tp))
        group = dist.new_group(list(ranks)) if pipeline_parallel_size > 1 else None
        if rank in ranks:
            _PP = GroupCoordinator(ranks, ranks.index(rank), group)


def model_parallel_is_initialized() -> bool:
    return _TP is not None


_ALONE = GroupCoordinator((0,), 0, None)
"""The group of one, when no group was initialized (one object: the layers ask every step;
with no peers it never communicates, so its stats stay zero)."""


def get_tp_group() -> GroupCoordinator:
    """This process's tensor-parallel group (a group of one when none was initialized)."""
    return _TP if _TP is not None else _ALONE


def get_pp_group() -> GroupCoordinator:
    """This process's pipeline group: one rank per stage (a group of one without PP)."""
    return _PP if _PP is not None else _ALONE


def pp_layer_range(num_layers: int) -> tuple[int, int]:
    """[start, end) of the decoder layers this rank's stage runs: an even split, the earlier
    stages taking one more where it does not divide."""
    pp = get_pp_group()
    base, extra = divmod(num_layers, pp.world_size)
    stage = pp.rank_in_group
    start = stage * base + min(stage, extra)
    return start, start + base + (stage < extra)


def get_ep_group() -> GroupCoordinator | None:
    """The expert-parallel group, None unless --enable-expert-parallel."""
    return _EP


def get_tensor_model_parallel_world_size() -> int:
    return get_tp_group().world_size


def get_tensor_model_parallel_rank() -> int:
    return get_tp_group().rank_in_group


def destroy_model_parallel() -> None:
    """Leave the groups and the world (a worker's shutdown)."""
    global _TP, _EP, _PP
    _TP = _EP = _PP = None
    if dist.is_initialized():
        dist.destroy_process_group()
