"""Layers choose their kernel once, at construction (model_executor/custom_op.py): the compiled
CPU kernel when built float32 on the CPU, the PyTorch reference otherwise; both agree."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.layers.activation import GeluAndMul, SiluAndMul
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
    assert _chosen(GemmaRMSNorm(8)) == "forward_cpu"  # (its weight holds 1 + w)
    assert _chosen(GeluAndMul("tanh")) == "forward_cpu"
    assert _chosen(GeluAndMul("none")) == "forward_native"  # (erf: no kernel computes it)


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
    gelu, gate_up = GeluAndMul("tanh"), torch.randn(5, 2 * 37) * 4  # (a vector tail of 5)
    torch.testing.assert_close(gelu(gate_up), gelu.forward_native(gate_up))
    # the saturated ends (e^(-2z) clamped, never inf / inf): gelu(-40) ~ 0, gelu(40) = 40
    ends = torch.tensor([[-40.0, 40.0, 2.0, 3.0]])
    torch.testing.assert_close(gelu(ends), torch.tensor([[0.0, 120.0]]), rtol=0, atol=1e-30)


def test_gemma_rms_norm_scales_by_one_plus_the_checkpoint_weight():
    """The loader stores 1 + w in float32; norm(x) is HF GemmaRMSNorm's, in float32 (compiled)
    and in bfloat16 (reference: the product in float32, then rounded, as HF does)."""
    torch.manual_seed(0)
    w = torch.randn(16) * 0.1
    x, residual = torch.randn(5, 16), torch.randn(5, 16)

    def hf_gemma_norm(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h32 = h.float()
        out = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (out * (1.0 + w.float())).to(h.dtype)

    norm = GemmaRMSNorm(16)
    norm.weight.weight_loader(norm.weight, w)
    assert torch.equal(norm.weight, 1.0 + w)
    got, res = norm(x, residual)
    torch.testing.assert_close(res, x + residual, rtol=0, atol=0)
    torch.testing.assert_close(got, hf_gemma_norm(x + residual, w))
    for a, b in zip(norm(x, residual), norm.forward_native(x, residual)):
        torch.testing.assert_close(a, b)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        norm16 = GemmaRMSNorm(16)
    finally:
        torch.set_default_dtype(default)
    assert _chosen(norm16) == "forward_native" and norm16.weight.dtype == torch.float32
    w16, x16 = w.to(torch.bfloat16), x.to(torch.bfloat16)
    norm16.weight.weight_loader(norm16.weight, w16)
    assert torch.equal(norm16(x16)[0], hf_gemma_norm(x16, w16))
