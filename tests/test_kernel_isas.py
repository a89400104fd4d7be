"""The kernels' other instruction-set builds pass the kernel tests on this CPU too.

The compiled kernels have one code path per ISA (AVX-512, AVX2, portable C++), chosen at build
time from torch's CPU capability; a machine runs the suite on its own path only. ATen honours
ATEN_CPU_CAPABILITY, so the lower builds can be made and tested here: an AVX-512 machine checks
the AVX2 and portable paths, an AVX2 machine the portable one. Each build takes ~25 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pagedllm import envs

_ORDER = ["DEFAULT", "AVX2", "AVX512"]
_TESTS = [
    "tests/quantization/test_packed_kernel.py",
    "tests/quantization/test_gguf_blocks.py",
    "tests/model_executor/test_dense_linear.py",
    "tests/attention/test_backends.py",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[float32]",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[int4]",
    "tests/engine/test_batch_invariance.py::test_tiny_models_are_batch_invariant[int8-kv]",
]


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["DEFAULT", "AVX2"])
def test_lower_isa_build_passes_kernel_tests(isa):
    own = torch.backends.cpu.get_cpu_capability()
    if not envs.compiled_kernels() or _ORDER.index(isa) >= _ORDER.index(own):
        pytest.skip(f"this CPU runs {own}: the {isa} build is its own path or beyond it")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa.lower()}
    probe = (
        "import torch; from pagedllm.kernels import cpu_kernels_available, kernel_isa; "
        "print(kernel_isa(torch.backends.cpu.get_cpu_capability()), cpu_kernels_available())"
    )
    built = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert built.stdout.split() == [isa, "True"], built.stdout + built.stderr[-3000:]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_TESTS],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert " passed" in summary and "skipped" not in summary, summary
