"""Platform detection and per-platform defaults (threads, default dtype)."""

from __future__ import annotations

from pagedllm.config import DeviceConfig
from pagedllm.config.parallel import ParallelConfig
from pagedllm.logger import init_logger

logger = init_logger(__name__)


def configure_threads(device_config: DeviceConfig, parallel: ParallelConfig | int | None = None,
                      rank: int | None = None) -> None:
    """Intra-op threads and CPUs on CPU (once per process, in each rank): --num-threads /
    PAGEDLLM_NUM_THREADS, else the allowed cores shared out over the ranks on this machine (the
    engine cores of -dp here x each one's world), each rank pinned to its own share
    (platforms/cpu_binding.py; --cpu-omp-threads-bind nobind keeps the threads only). `rank`:
    this rank in its engine core's world (None: torch.distributed's rank, 0 without it)."""
    if not device_config.device.startswith("cpu"):
        return
    from pagedllm import envs
    from pagedllm.platforms.cpu_binding import (
        apply_cpu_binding,
        physical_core_groups,
        plan_cpu_binding,
    )

    if isinstance(parallel, int):  # the older call, configure_threads(device, world_size)
        parallel = ParallelConfig(tensor_parallel_size=parallel)
    parallel = parallel or ParallelConfig()
    if rank is None:
        rank = _distributed_rank()
    first, count = parallel.local_ranks
    mode = device_config.cpu_omp_threads_bind
    if parallel.executor_backend == "ray" and mode == "auto":
        # NOTE: Ray places the ranks; which share this node is not known here
        first, count, mode = 0, parallel.world_size, "nobind"
    plan = plan_cpu_binding(physical_core_groups(), count, device_config.num_threads
                            or envs.num_threads(), mode)
    index = first + rank
    apply_cpu_binding(plan, index)
    if index == 0 and count > 1:
        log = logger.warning if plan.oversubscribed else logger.info
        log("CPU binding of the %d ranks on this machine: %s", count, plan.describe())


def _distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
