"""The only place PAGEDLLM_* environment variables are read. Each is read when asked for, never at
import time."""

from __future__ import annotations

import os


def log_level() -> str:
    """PAGEDLLM_LOGGING_LEVEL: log level of the `pagedllm` loggers (default INFO)."""
    return os.environ.get("PAGEDLLM_LOGGING_LEVEL", "INFO").upper()


def log_format() -> str:
    """PAGEDLLM_LOG_FORMAT: "text" (default) or "json" (one JSON object per line); `pagedllm
    serve --log-format` sets it so that the engine core process logs the same way."""
    return os.environ.get("PAGEDLLM_LOG_FORMAT", "text").lower()


def api_key() -> str | None:
    """PAGEDLLM_API_KEY: API key the server requires when --api-key is not given."""
    return os.environ.get("PAGEDLLM_API_KEY") or None


def num_threads() -> int | None:
    """PAGEDLLM_NUM_THREADS: intra-op threads of the engine core (default: physical cores)."""
    value = os.environ.get("PAGEDLLM_NUM_THREADS")
    return int(value) if value else None


def cpu_omp_threads_bind() -> str:
    """PAGEDLLM_CPU_OMP_THREADS_BIND: the default of --cpu-omp-threads-bind ("auto", "nobind" or
    per-rank CPU lists such as "0-3|4-7"; vLLM's VLLM_CPU_OMP_THREADS_BIND)."""
    return os.environ.get("PAGEDLLM_CPU_OMP_THREADS_BIND") or "auto"


def step_profile() -> int | None:
    """PAGEDLLM_STEP_PROFILE: time each engine step's phases (schedule, prepare_inputs, forward,
    sample, update, output; see metrics/step_profile.py) and log the breakdown every N steps
    (unset or 0: off)."""
    value = os.environ.get("PAGEDLLM_STEP_PROFILE")
    return int(value) if value and int(value) > 0 else None


def process_start_method() -> str:
    """PAGEDLLM_PROCESS_START_METHOD: how engine cores and worker ranks start (utils/
    process_start.py): "spawn" (default) or "forkserver" (torch and transformers imported once
    by a forkserver that stays resident, ~300 MB: pays where many processes start, e.g. tests)."""
    value = os.environ.get("PAGEDLLM_PROCESS_START_METHOD", "spawn")
    if value not in ("spawn", "forkserver"):
        raise ValueError(f"PAGEDLLM_PROCESS_START_METHOD={value!r}: 'spawn' or 'forkserver'")
    return value


def compiled_kernels() -> bool:
    """PAGEDLLM_COMPILED_KERNELS: build and use the C++ CPU kernels of pagedllm/kernels (quantized
    linear layers, paged attention) — default 1; 0 falls back to PyTorch operators only."""
    return os.environ.get("PAGEDLLM_COMPILED_KERNELS", "1") not in ("0", "false", "False", "")


def huge_pages() -> bool:
    """PAGEDLLM_HUGE_PAGES: a CPU model's weights on transparent huge pages
    (utils/huge_pages.py: a batch-1 decode streams the weights ~1.1-1.2x faster) — default 1;
    0 leaves them where torch allocates them."""
    return os.environ.get("PAGEDLLM_HUGE_PAGES", "1") not in ("0", "false", "False", "")


def compact_kquant() -> bool:
    """PAGEDLLM_COMPACT_KQUANT: hold GGUF Q4_K/Q5_K/Q6_K weights with the file's compact scales
    and 6-bit codes (quantization/kquant_weight.py: the same results bit for bit, ~30 % fewer
    weight bytes on a Q4_K_M file, decode faster for streaming fewer bytes) — default 1; 0 keeps
    the multiplied-out PackedGroupWeight form (float scale and min per group, 8-bit codes)."""
    return os.environ.get("PAGEDLLM_COMPACT_KQUANT", "1") not in ("0", "false", "False", "")


def compact_q5() -> bool:
    """PAGEDLLM_COMPACT_Q5: hold GGUF Q5_0/Q5_1 weights with the file's fp16 scales and 5-bit
    codes (quantization/q5_weight.py: the same results bit for bit, 5.5-6 bits a weight instead
    of 9) — default: PAGEDLLM_COMPACT_KQUANT's value (1); 0 keeps PackedGroupWeight's form."""
    value = os.environ.get("PAGEDLLM_COMPACT_Q5")
    if value is None:
        return compact_kquant()
    return value not in ("0", "false", "False", "")


def kernel_cache_dir() -> str:
    """PAGEDLLM_CACHE_DIR: where the compiled kernels are built and cached (default
    ~/.cache/pagedllm)."""
    return os.environ.get("PAGEDLLM_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedllm"
    )


def kernel_build_timeout() -> float:
    """PAGEDLLM_KERNEL_BUILD_TIMEOUT: seconds a process waits for another one's build of the
    compiled kernels before it gives up and uses PyTorch operators (default 600)."""
    return float(os.environ.get("PAGEDLLM_KERNEL_BUILD_TIMEOUT") or 600)


def execute_model_timeout() -> float:
    """PAGEDLLM_EXECUTE_MODEL_TIMEOUT_SECONDS: how long a multi-rank executor waits for one
    step's answer before it declares the ranks stuck and stops the engine (default 300; vLLM's
    VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS). A dead rank is noticed at once, without it."""
    return float(os.environ.get("PAGEDLLM_EXECUTE_MODEL_TIMEOUT_SECONDS") or 300)
