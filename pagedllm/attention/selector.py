"""Pick an attention backend by name or platform (lazy: heavy backends load only when chosen)."""

from __future__ import annotations

from pagedllm.attention.backend import AttentionBackend
from pagedllm.utils.registry import Registry

BACKENDS = Registry("attention backend")
BACKENDS.register("torch_ref", "pagedllm.attention.backends.torch_ref", "TorchRefBackend")
BACKENDS.register("cpu_sdpa", "pagedllm.attention.backends.cpu_sdpa", "CpuSdpaBackend")
BACKENDS.register("cpu_paged", "pagedllm.attention.backends.cpu_paged", "CpuPagedBackend")


def default_backend_name(device: str) -> str:
    # cpu_paged runs the compiled kernel (and takes cpu_sdpa's path where the kernel does not
    # apply); cpu_sdpa is plain PyTorch, so it serves CUDA until a dedicated backend exists.
    return "cpu_paged" if str(device).startswith("cpu") else "cpu_sdpa"


def get_attn_backend(name: str | None, device: str) -> type[AttentionBackend]:
    return BACKENDS.get(name or default_backend_name(device))
