"""What every engine core does before it has a model on its device: threads, seed, the compiled
CPU kernels, a memory check, the load. Both the generation and the pooling core call it (the
first piece of the Worker that the execution-layer issue builds), so neither reaches into the
other for it."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm import envs
from pagedllm.config import EngineConfig
from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.model_loader import estimate_weight_bytes, get_model
from pagedllm.platforms import configure_threads
from pagedllm.utils.huge_pages import move_weights_to_huge_pages
from pagedllm.utils.memory import format_bytes
from pagedllm.worker.kv_cache_alloc import available_memory


def load_model_on_device(config: EngineConfig) -> tuple[torch.device, nn.Module]:
    """The device and the model loaded on it."""
    configure_threads(config.device, config.parallel)
    torch.manual_seed(config.model.seed)
    device = torch.device(config.device.device)
    if device.type == "cpu":
        # NOTE: built (once per cache) before the weights load, so a first start's build
        # shows as such in the log and not as a weight loader that seems stuck
        cpu_kernels_available()
    check_weights_fit(config, device)
    model = get_model(config.model, device)
    if device.type == "cpu" and envs.huge_pages():
        # (before the fused stack or anything else takes views of the weights)
        move_weights_to_huge_pages(model)
    return device, model


def check_weights_fit(config: EngineConfig, device: torch.device) -> None:
    """Fail at start-up with a clear message rather than being killed mid-load."""
    needed = estimate_weight_bytes(config.model)
    available = available_memory(device)
    if needed > 0.9 * available:
        raise ValueError(
            f"{config.model.model} needs about {format_bytes(needed)} for its weights in "
            f"{config.model.dtype}, but only {format_bytes(available)} is available on {device}; "
            f"use a smaller model or dtype"
        )
