"""Platform detection and per-platform defaults (threads, default dtype)."""

from __future__ import annotations

from pagedllm.config import DeviceConfig


def configure_threads(device_config: DeviceConfig) -> None:
    """Use every physical core for intra-op work on CPU (once per process)."""
    if not device_config.device.startswith("cpu"):
        return
    import torch

    from pagedllm import envs
    from pagedllm.utils.system import physical_cores

    threads = device_config.num_threads or envs.num_threads() or physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
