"""The compiled kernels build wherever a C++ compiler and ninja exist. Without this check a build
error would only show as a warning, and every kernel test would be skipped as "unavailable"."""

from __future__ import annotations

import shutil

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
               "rms_norm_residual", "rotary_embedding", "silu_and_mul", "argmax_rows"):  # fmt: skip
        assert hasattr(torch.ops.pagedllm, op), op
    assert torch.classes.pagedllm.LlamaDecoderStack().num_layers() == 0
