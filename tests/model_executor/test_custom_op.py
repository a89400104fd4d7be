"""Layers choose their kernel once, at construction (model_executor/custom_op.py): the compiled
CPU kernel when built float32 on the CPU, the PyTorch reference otherwise; both agree."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.layers.activation import SiluAndMul
from pagedllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
from pagedllm.model_executor.layers.linear import ReplicatedLinear
from pagedllm.model_executor.layers.rotary import RotaryEmbedding

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


def _chosen(op: torch.nn.Module) -> str:
    return op._forward_method.__name__


def test_float32_cpu_layers_choose_the_compiled_kernel():
    assert _chosen(RMSNorm(8)) == "forward_cpu"
    assert _chosen(SiluAndMul()) == "forward_cpu"
    assert _chosen(RotaryEmbedding(8, 16, {"rope_type": "default", "rope_theta": 1e4})) == (
        "forward_cpu"
    )
    assert ReplicatedLinear(8, 4).quant_method.compiled
    assert _chosen(GemmaRMSNorm(8)) == "forward_native"  # (1 + w): no kernel computes it


def test_other_dtypes_choose_the_reference():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        norm, act, linear = RMSNorm(8), SiluAndMul(), ReplicatedLinear(8, 4)
    finally:
        torch.set_default_dtype(default)
    assert _chosen(norm) == _chosen(act) == "forward_native"
    assert not linear.quant_method.compiled
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    norm.weight.data.fill_(1.0)
    torch.testing.assert_close(norm(x)[0], norm.forward_native(x)[0])


def test_compiled_and_reference_forms_agree():
    torch.manual_seed(0)
    norm = RMSNorm(16)
    norm.weight.data.uniform_(0.5, 1.5)
    x, residual = torch.randn(5, 16), torch.randn(5, 16)
    for got, want in zip(norm(x, residual), norm.forward_native(x, residual)):
        torch.testing.assert_close(got, want)
    act, gate_up = SiluAndMul(), torch.randn(5, 32)
    torch.testing.assert_close(act(gate_up), act.forward_native(gate_up))
    rotary = RotaryEmbedding(8, 32, {"rope_type": "default", "rope_theta": 1e4})
    positions, q, k = torch.tensor([0, 3, 7, 1, 30]), torch.randn(5, 16), torch.randn(5, 8)
    for got, want in zip(rotary(positions, q, k), rotary.forward_native(positions, q, k)):
        torch.testing.assert_close(got, want)
