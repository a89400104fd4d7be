"""The compiled kernels build wherever a C++ compiler and ninja exist, and a wheel carries every
file they build from. Without the first check a build error would only show as a warning, and
every kernel test would be skipped as "unavailable"."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pagedllm import envs


@pytest.mark.skipif(
    shutil.which("c++") is None or shutil.which("ninja") is None or not envs.compiled_kernels(),
    reason="no C++ compiler / ninja, or PAGEDLLM_COMPILED_KERNELS=0",
)
def test_compiled_kernels_build_and_register():
    import torch

    from pagedllm.kernels import cpu_kernels_available

    assert cpu_kernels_available()
    for op in ("quant_linear", "quant_gather_rows", "dense_linear", "paged_attention",
               "rms_norm_residual", "rotary_embedding", "silu_and_mul", "gelu_tanh_and_mul",
               "argmax_rows", "lora_add_rows"):  # fmt: skip
        assert hasattr(torch.ops.pagedllm, op), op
    assert torch.classes.pagedllm.LlamaDecoderStack().num_layers() == 0


@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None,
    reason="no setuptools / pip to build a wheel offline",
)
def test_wheel_ships_every_kernel_source(tmp_path):
    """A non-editable install builds the kernels from the wheel's copy of csrc/: a header left
    out would make every build fail there, and the engine silently fall back to PyTorch ops."""
    from pagedllm.kernels import _SOURCES, kernel_source_files

    root = Path(__file__).resolve().parents[1]
    files = kernel_source_files()
    assert set(_SOURCES) <= set(files)
    assert any("/" in f for f in files), "expected headers in subfolders (vec/, quant/)"
    # a copy of the project without tests and caches: nothing is written into the checkout
    src = tmp_path / "src"
    shutil.copytree(root / "pagedllm", src / "pagedllm",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("pagedllm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = [f for f in files if f"pagedllm/kernels/csrc/{f}" not in shipped]
    assert not missing, f"the wheel lacks {missing}"
