"""DeviceConfig: where the model runs and with which attention backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"
    """Resolved torch device string ("cpu", "cuda", "cuda:1", "mps")."""
    attention_backend: str | None = None
    """Attention backend name; None: the platform's default."""
    num_threads: int | None = None
    """Intra-op threads on CPU; None: all physical cores."""
