"""pagedllm's own compiled CPU kernels (C++ in csrc/), built for this CPU's instruction set: each
kernel body is written once against the vector types of csrc/vec/ (AVX-512, AVX2 or portable C++,
one header each, chosen by the compile flags of `_compile_flags`).

They are built on first use with torch's cpp_extension (ninja + the system C++ compiler, ~40 s on
2 cores) into PAGEDLLM_CACHE_DIR and registered as torch.ops.pagedllm.*; later processes load the
cached library. `build.py` makes that safe: one build at a time under an OS lock, in a temporary
directory moved into place when complete. `scripts/install.sh` builds them once at install time and
the engine before it loads weights. When they cannot be built (no compiler,
PAGEDLLM_COMPILED_KERNELS=0) callers fall back to PyTorch operators.
"""

from __future__ import annotations

import functools
import hashlib
import os

from pagedllm import envs
from pagedllm.kernels.build import ExtensionSpec, load_or_build

_SOURCES = (
    "quant_linear.cpp",
    "kquant_linear.cpp",
    "q5_linear.cpp",
    "dense_linear.cpp",
    "paged_attention.cpp",
    "elementwise.cpp",
    "decoder_layer.cpp",
    "argmax.cpp",
    "lora.cpp",
)
_CSRC = os.path.join(os.path.dirname(__file__), "csrc")


def kernel_isa(capability: str) -> str:
    """The instruction set the kernels are built for: torch's CPU capability (AVX512, AVX2,
    DEFAULT), with "_VNNI" where an AVX-512 CPU has VNNI (one instruction for the quantized
    kernel's int16 multiply-add)."""
    if capability == "AVX512" and "avx512_vnni" in cpu_flags():
        return "AVX512_VNNI"
    return capability


def cpu_flags() -> set[str]:
    """Linux's x86 CPU flags (/proc/cpuinfo); empty where there is no flags line to read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compile_flags(isa: str) -> list[str]:
    flags = ["-O3", "-DNDEBUG", "-fopenmp"]
    if isa.startswith(("AVX2", "AVX512")):
        flags += ["-mavx2", "-mfma", "-mf16c"]
    if isa.startswith("AVX512"):
        # 512-bit code only where written so (the quantized kernel); the compiler's own
        # vectorization stays at 256 bits, as on AVX2
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                  "-mprefer-vector-width=256"]  # fmt: skip
    if isa == "AVX512_VNNI":
        flags.append("-mavx512vnni")
    return flags


def kernel_source_files() -> list[str]:
    """Every file under csrc/ (subfolders included), relative to it: the sources in _SOURCES and
    the headers they include. The build's hash covers them all; the package ships them all."""
    found = []
    for folder, subfolders, files in os.walk(_CSRC):
        subfolders.sort()
        found += [os.path.relpath(os.path.join(folder, f), _CSRC) for f in files]
    return sorted(found)


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for entry in kernel_source_files():
        with open(os.path.join(_CSRC, entry), "rb") as f:
            digest.update(entry.encode() + f.read())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def cpu_kernels_available() -> bool:
    """Build (or load the cached build of) the kernels; False if they cannot be used here."""
    if not envs.compiled_kernels():
        return False
    import torch

    isa = kernel_isa(torch.backends.cpu.get_cpu_capability())
    spec = ExtensionSpec(
        # the sources' hash in the name: a changed header rebuilds too (torch only tracks .cpp)
        name=f"pagedllm_cpu_kernels_{isa.lower()}_{_sources_hash()}",
        sources=tuple(os.path.join(_CSRC, s) for s in _SOURCES),
        cflags=tuple(_compile_flags(isa)),
        ldflags=("-fopenmp",),
        description=f"pagedllm's CPU kernels for {isa}",
    )
    # NOTE: old builds stay in the cache (a few MB each); `rm -r` of a directory is safe.
    return load_or_build(
        spec,
        kernel_build_root(),
        registered=lambda: hasattr(torch.ops.pagedllm, "quant_linear"),
        timeout_s=envs.kernel_build_timeout(),
    )


def kernel_build_root() -> str:
    """Where builds for this torch live: `<PAGEDLLM_CACHE_DIR>/kernels/torch<version>`."""
    import torch

    return os.path.join(envs.kernel_cache_dir(), "kernels", f"torch{torch.__version__}")


def fits_cpu_float32(*tensors) -> bool:
    """The compiled kernels (float32, CPU) apply to `tensors`: all float32 on the CPU, and the
    kernels are built. For callers handed tensors of any kind per call (attention backends, the
    sampler's argmax); layers choose once, at construction (model_executor/custom_op.py)."""
    import torch

    return _fits_cpu(tensors, (torch.float32,))


def _fits_cpu(tensors, dtypes) -> bool:
    for t in tensors:  # (a loop, not all() over a generator: called per step)
        if t.dtype not in dtypes or t.device.type != "cpu":
            return False
    return cpu_kernels_available()
