"""Pick the attention backend once, at start-up, from the platform, the model dtype, the KV cache
dtype and the head sizes; lazy: heavy backends load only when considered.

A backend named by the user must support the model (else a ValueError lists why); by default the
platform's preference order is tried and the first backend that supports the model wins, with
the reasons the faster ones declined, for the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedllm.attention.backend import AttentionBackend
from pagedllm.utils.registry import Registry

BACKENDS = Registry("attention backend")
BACKENDS.register("torch_ref", "pagedllm.attention.backends.torch_ref", "TorchRefBackend")
BACKENDS.register("torch_sdpa", "pagedllm.attention.backends.torch_sdpa", "TorchSdpaBackend")
BACKENDS.register("cpu_paged", "pagedllm.attention.backends.cpu_paged", "CpuPagedBackend")

PREFERENCE = {"cpu": ("cpu_paged", "torch_sdpa")}
"""Backends tried in order per device type; any other device: torch_sdpa (plain PyTorch)."""


@dataclass(frozen=True)
class AttentionRequirements:
    device_type: str
    dtype: torch.dtype
    """The model dtype."""
    kv_cache_dtype: torch.dtype
    head_sizes: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class BackendChoice:
    backend: type[AttentionBackend]
    declined: dict[str, list[str]]
    """Faster backends passed over, with their reasons."""

    def describe(self, kv_cache_dtype: torch.dtype | None = None) -> str:
        why = "; ".join(f"{name}: {', '.join(r)}" for name, r in self.declined.items())
        path = self.backend.kv_cache_path(kv_cache_dtype) if kv_cache_dtype else None
        return self.backend.name + (f" ({why})" if why else "") + (f"; {path}" if path else "")


def select_attn_backend(name: str | None, needs: AttentionRequirements) -> BackendChoice:
    if name is not None:
        backend = BACKENDS.get(name)
        reasons = _reasons(backend, needs)
        if reasons:
            raise ValueError(f"attention backend {name!r} cannot serve this model: "
                             f"{', '.join(reasons)}")  # fmt: skip
        return BackendChoice(backend, {})
    declined: dict[str, list[str]] = {}
    for candidate in PREFERENCE.get(needs.device_type, ("torch_sdpa",)):
        backend = BACKENDS.get(candidate)
        reasons = _reasons(backend, needs)
        if not reasons:
            return BackendChoice(backend, declined)
        declined[candidate] = reasons
    raise ValueError(f"no attention backend serves this model: {declined}")


def _reasons(backend: type[AttentionBackend], needs: AttentionRequirements) -> list[str]:
    return backend.validate_configuration(
        needs.device_type, needs.dtype, needs.kv_cache_dtype, set(needs.head_sizes)
    )
