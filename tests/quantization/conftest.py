"""`pytorch_kernels_only`: to_kernel picks among PyTorch's kernels, as on a machine where
pagedllm's compiled kernels cannot be built."""

from __future__ import annotations

import pytest


@pytest.fixture
def pytorch_kernels_only(monkeypatch):
    from pagedllm.model_executor.quantization import group_quant

    monkeypatch.setattr(group_quant, "compiled_kernel_fits", lambda *args: False)
