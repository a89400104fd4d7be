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
    cpu_omp_threads_bind: str = "auto"
    """Which CPUs each rank's threads run on (vLLM's VLLM_CPU_OMP_THREADS_BIND): "auto" (a
    disjoint share of the allowed CPUs per rank on this machine, when there are several),
    "nobind", or one list per rank on this machine, e.g. "0-3|4-7" (platforms/cpu_binding.py)."""
