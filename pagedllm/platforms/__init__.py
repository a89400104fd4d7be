"""Platform detection and per-platform defaults (threads, default dtype)."""

from __future__ import annotations

from pagedllm.config import DeviceConfig


def configure_threads(device_config: DeviceConfig, world_size: int = 1) -> None:
    """Intra-op threads on CPU (once per process): --num-threads / PAGEDLLM_NUM_THREADS, else
    the physical cores shared out over the engine core's `world_size` ranks (ranks on one
    machine that each took every core would fight over them)."""
    if not device_config.device.startswith("cpu"):
        return
    import torch

    from pagedllm import envs
    from pagedllm.utils.system import physical_cores

    threads = (device_config.num_threads or envs.num_threads()
               or max(1, physical_cores() // world_size))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
