"""pagedllm's own compiled CPU kernels (C++ in csrc/, AVX2 where the CPU has it).

They are built on first use with torch's cpp_extension (ninja + the system C++ compiler, ~15 s)
into PAGEDLLM_CACHE_DIR and registered as torch.ops.pagedllm.*; later processes load the cached
library. `scripts/install.sh` builds them once at install time. When they cannot be built (no
compiler, PAGEDLLM_COMPILED_KERNELS=0) callers fall back to PyTorch operators.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time

from pagedllm import envs
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_SOURCES = (
    "quant_linear.cpp",
    "dense_linear.cpp",
    "paged_attention.cpp",
    "elementwise.cpp",
    "decoder_layer.cpp",
    "argmax.cpp",
)
_CSRC = os.path.join(os.path.dirname(__file__), "csrc")


def _compile_flags(capability: str) -> list[str]:
    flags = ["-O3", "-DNDEBUG", "-fopenmp"]
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]
    return flags


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for entry in sorted(os.listdir(_CSRC)):
        with open(os.path.join(_CSRC, entry), "rb") as f:
            digest.update(entry.encode() + f.read())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def cpu_kernels_available() -> bool:
    """Build (or load the cached build of) the kernels; False if they cannot be used here."""
    if not envs.compiled_kernels():
        return False
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    # the sources' hash in the name: a changed header rebuilds too (torch only tracks .cpp files)
    name = f"pagedllm_cpu_kernels_{capability.lower()}_{_sources_hash()}"
    build_dir = os.path.join(envs.kernel_cache_dir(), "kernels", f"torch{torch.__version__}", name)
    # NOTE: old builds stay in the cache (a few MB each); `rm -r` of the directory is safe.
    os.makedirs(build_dir, exist_ok=True)
    start = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        load(
            name=name,
            sources=[os.path.join(_CSRC, s) for s in _SOURCES],
            extra_cflags=_compile_flags(capability),
            extra_ldflags=["-fopenmp"],
            build_directory=build_dir,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, ...: PyTorch operators only
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning("compiled CPU kernels unavailable (%s: %s); using PyTorch operators",
                       type(exc).__name__, first_line)  # fmt: skip
        return False
    seconds = time.perf_counter() - start
    how = "built" if seconds > 2.0 else "loaded from cache"  # a build takes 15-60 s
    logger.info("compiled CPU kernels (%s) %s in %.1f s", capability, how, seconds)
    return True


def fits_cpu_kv_cache(kv_cache) -> bool:
    """The compiled attention and cache write take `kv_cache`: float32 or float16 on the CPU
    (queries stay float32), and the kernels are built."""
    import torch

    return _fits_cpu((kv_cache,), (torch.float32, torch.float16))


def fits_cpu_float32(*tensors) -> bool:
    """The compiled kernels (float32, CPU) apply to `tensors`: all float32 on the CPU, and the
    kernels are built. The one check every eager module and backend makes before calling them."""
    import torch

    return _fits_cpu(tensors, (torch.float32,))


def _fits_cpu(tensors, dtypes) -> bool:
    return all(t.dtype in dtypes and t.device.type == "cpu" for t in tensors) and (
        cpu_kernels_available()
    )
