"""Each PyTorch quantized linear layout equals its dequantized float reference: exactly in
float32 for per-call dequantization, within bf16 rounding for PyTorch's packed int8/int4 kernels.
(pagedllm's compiled kernel: test_packed_kernel.py.)"""

from __future__ import annotations

import pytest
import torch

from pagedllm.model_executor.quantization.group_quant import (
    GroupQuant,
    concat_rows,
    quantize_int4_grouped,
    quantize_int8_per_channel,
    to_kernel,
)
from pagedllm.model_executor.quantization.kernels import (
    GroupedDequantWeight,
    Int4GroupWeight,
    Int8ChannelWeight,
    SplitInt4Weight,
)

pytestmark = pytest.mark.usefixtures("pytorch_kernels_only")

BF16_REL = 6e-3
"""Relative (Frobenius) error of a bf16-activation matmul against float32."""


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def _check(kernel, reference_w: torch.Tensor, dtype: torch.dtype, tol: float) -> None:
    x = torch.randn(5, reference_w.shape[1], dtype=dtype)
    y = kernel(x)
    assert y.dtype == dtype and y.shape == (5, reference_w.shape[0])
    ref = x.float() @ reference_w.t()
    assert _rel_err(y, ref) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_features", [64, 24, 100])  # 24, 100: not multiples of 16
def test_int8_per_channel_matches_reference(dtype, in_features):
    torch.manual_seed(0)
    gq = quantize_int8_per_channel(torch.randn(96, in_features))
    kernel = to_kernel(gq)
    assert isinstance(kernel, Int8ChannelWeight)
    # the kernel's weight is exactly the dequantized one (scales are bf16-exact)
    torch.testing.assert_close(kernel.dequantize(), gq.dequantize(), rtol=0, atol=0)
    _check(kernel, gq.dequantize(), dtype, BF16_REL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_grouped_matches_reference(dtype, group_size):
    torch.manual_seed(1)
    w = torch.randn(48, 256)
    gq = quantize_int4_grouped(w, group_size)
    kernel = to_kernel(gq)
    assert isinstance(kernel, Int4GroupWeight)
    ref = gq.dequantize()
    assert (ref - w).abs().max() <= gq.scales.max() * 0.51 + 1e-6  # a real 4-bit rounding
    # dequantize() goes through the kernel (bf16 output): equal up to bf16 rounding
    torch.testing.assert_close(kernel.dequantize(), ref, rtol=4e-3, atol=1e-3)
    _check(kernel, ref, dtype, BF16_REL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_dequant_is_exact_in_activation_dtype(dtype):
    torch.manual_seed(2)
    codes = torch.randint(-32, 32, (40, 96), dtype=torch.int8)
    gq = GroupQuant(codes, torch.rand(40, 6) * 0.1, torch.randn(40, 6) * 0.01, 16)
    kernel = to_kernel(gq)  # group 16: no packed kernel takes it
    assert isinstance(kernel, GroupedDequantWeight)
    x = torch.randn(3, 96, dtype=dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(kernel(x), x @ gq.dequantize().t(), rtol=1e-5, atol=1e-5)
    else:  # the weight itself is rounded to bf16
        assert _rel_err(kernel(x), x.float() @ gq.dequantize().t()) < BF16_REL


def test_grouped_dequant_chunks_rows(monkeypatch):
    import pagedllm.model_executor.quantization.kernels as kernels

    monkeypatch.setattr(kernels, "_DEQUANT_CHUNK_ELEMS", 64 * 7)
    gq = GroupQuant(torch.randint(-8, 8, (50, 64), dtype=torch.int8), torch.rand(50, 2), None, 32)
    kernel = to_kernel(gq)
    assert kernel.rows_per_chunk == 7
    x = torch.randn(2, 64)
    torch.testing.assert_close(kernel(x), x @ gq.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_int4_layout_that_does_not_fit_falls_back_exactly():
    torch.manual_seed(3)
    gq = quantize_int4_grouped(torch.randn(24, 64), 32)  # 24 rows: not a multiple of 16
    kernel = to_kernel(gq)
    assert isinstance(kernel, GroupedDequantWeight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(kernel(x), x @ gq.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_concat_rows_of_mixed_groups_and_input_perm():
    torch.manual_seed(4)
    a = quantize_int4_grouped(torch.randn(16, 64), 32)
    b = GroupQuant(torch.randint(0, 64, (16, 64), dtype=torch.int8), torch.rand(16, 4),
                   torch.randn(16, 4), 16)
    merged = concat_rows([a, b])
    assert merged.group_size == 16 and not merged.unsigned4
    torch.testing.assert_close(merged.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    perm = torch.randperm(64)
    kernel = to_kernel(merged, input_perm=perm)
    x = torch.randn(3, 64)
    # stored columns are permuted: column j of the stored weight multiplies x[:, perm[j]]
    ref = x[:, perm] @ merged.dequantize().t()
    torch.testing.assert_close(kernel(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel.dequantize()[:, perm], merged.dequantize())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("low, high", [(-128, 128), (0, 32)])  # Q8_0-like, Q5-like codes
def test_split_int4_matches_reference(dtype, low, high):
    torch.manual_seed(5)
    codes = torch.randint(low, high, (32, 128), dtype=torch.int8)
    gq = GroupQuant(codes, torch.rand(32, 4) * 0.01, torch.randn(32, 4) * 0.01, 32)
    kernel = to_kernel(gq)
    assert isinstance(kernel, SplitInt4Weight)
    ref = gq.dequantize()  # W_hi + W_lo, each rounded to bf16: absolute error ~ max|W|
    atol = 4e-3 * float(ref.abs().max())
    torch.testing.assert_close(kernel.dequantize(), ref, rtol=8e-3, atol=atol)
    _check(kernel, gq.dequantize(), dtype, BF16_REL)
