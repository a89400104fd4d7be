"""pagedllm's compiled quantized linear kernel (kernels/csrc/quant_linear.cpp) against the float
reference W = scale * code + min: integer dot products on activations quantized to int16 per 32
columns, the same arithmetic for every row count (bounded error, and a row's bits independent of
the rows beside it), both code layouts (u4, i8) and both group sizes (16, 32)."""

from __future__ import annotations

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available
from pagedllm.model_executor.quantization.group_quant import (
    GroupQuant,
    quantize_int4_grouped,
    quantize_int8_grouped,
    to_kernel,
)
from pagedllm.model_executor.quantization.kernels import PackedGroupWeight
from tests.quantization.bounds import INT16_ACT_REL

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")

N, K = 96, 320


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def _weights(kind: str, group: int) -> GroupQuant:
    torch.manual_seed(0)
    w = torch.randn(N, K)
    if kind == "u4":
        return quantize_int4_grouped(w, group)
    if kind == "i8":
        return quantize_int8_grouped(w, group)
    # 5-bit unsigned codes with a zero (GGUF Q5_1-like): centred into int8 by to_kernel
    codes = torch.randint(0, 32, (N, K), dtype=torch.int8)
    scales = torch.rand(N, K // group) * 0.1 + 0.01
    return GroupQuant(codes, scales, -16 * scales + 0.01 * torch.randn(N, K // group), group)


@pytest.mark.parametrize("kind", ["u4", "i8", "q5"])
@pytest.mark.parametrize("group", [16, 32])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 20, 33, 64, 300])
def test_packed_kernel_matches_reference(kind, group, rows):
    gq = _weights(kind, group)
    kernel = to_kernel(gq)
    assert type(kernel) is PackedGroupWeight and kernel.u4 == (kind == "u4")
    ref_w = gq.dequantize()
    torch.testing.assert_close(kernel.dequantize(), ref_w, rtol=1e-6, atol=1e-6)
    x = torch.randn(rows, K)
    y = kernel(x)
    assert y.shape == (rows, N) and y.dtype == torch.float32
    err = _rel_err(y, x @ ref_w.t())
    assert 0 < err < INT16_ACT_REL, err


@pytest.mark.parametrize("kind", ["u4", "i8", "q5"])
@pytest.mark.parametrize("group", [16, 32])
def test_rows_are_independent_of_batch(kind, group):
    """Row m's result is the same bits whatever rows share the call: alone, in every batch size
    of 2..40 (every tile shape and remainder), and inside a 300-row prefill."""
    kernel = to_kernel(_weights(kind, group))
    torch.manual_seed(2)
    x = torch.randn(300, K)
    alone = torch.cat([kernel(x[i : i + 1]) for i in range(40)])
    for rows in range(2, 41):
        assert torch.equal(kernel(x[:rows]), alone[:rows]), rows
    assert torch.equal(kernel(x)[:40], alone)
    assert torch.equal(kernel(x[13:300])[27 - 13 : 40 - 13], alone[27:40])


@pytest.mark.parametrize("group", [16, 32])
def test_wide_rows_over_several_k_blocks(group):
    """u4 weights over 1152 columns: calls of 24 rows and more widen the codes once per block of
    columns (quant/interleaved.h's widened path, AVX2 and portable builds), three blocks here.
    Every row is the same bits as alone (below, at and past the threshold, and inside 300 rows)
    and within the int16-activation bound of the float reference."""
    torch.manual_seed(0)
    gq = quantize_int4_grouped(torch.randn(N, 1152), group)
    kernel = to_kernel(gq)
    torch.manual_seed(3)
    x = torch.randn(300, 1152)
    alone = torch.cat([kernel(x[i : i + 1]) for i in range(40)])
    for rows in (2, 23, 24, 25, 31, 40):
        assert torch.equal(kernel(x[:rows]), alone[:rows]), rows
    whole = kernel(x)
    assert torch.equal(whole[:40], alone)
    assert 0 < _rel_err(whole, x @ gq.dequantize().t()) < INT16_ACT_REL


def test_larger_groups_are_regrouped_exactly():
    gq = quantize_int4_grouped(torch.randn(N, 256), 128)
    kernel = to_kernel(gq)
    assert kernel.group_size == 32
    torch.testing.assert_close(kernel.dequantize(), gq.dequantize(), rtol=1e-6, atol=1e-6)


def test_gather_rows_and_bf16_activations():
    gq = quantize_int8_grouped(torch.randn(N, K), 32)
    kernel = to_kernel(gq)
    ids = torch.tensor([[3, 0], [95, 3]])
    torch.testing.assert_close(kernel.gather_rows(ids), gq.dequantize()[ids], rtol=1e-6,
                               atol=1e-6)  # fmt: skip
    x = torch.randn(2, K, dtype=torch.bfloat16)
    y = kernel(x)
    assert y.dtype == torch.bfloat16
    assert _rel_err(y, x.float() @ gq.dequantize().t()) < 1e-2  # x itself in bf16


def _int16_round_trip(x: torch.Tensor) -> torch.Tensor:
    """x quantized to int16 per 32 columns (scale amax / 32767) and back: what the kernel
    multiplies the codes by."""
    blocks = x.view(x.shape[0], -1, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 32767
    return (torch.round(blocks / d) * d).view_as(x)


@pytest.mark.parametrize("group", [16, 32])
def test_centring_keeps_u4_error_at_centred_level(group):
    """u4 codes are 0..15: the kernel's centring term makes its error that of the centred codes
    (code - 8) times the rounded activations, d (c - 8) (x - xq); without it, it is
    d c (x - xq), about twice as large."""
    torch.manual_seed(1)
    gq = quantize_int4_grouped(torch.randn(N, K), group)
    x = torch.randn(3, K)
    x_err = x.double() - _int16_round_trip(x.double())
    scales = gq.scales.double()[:, :, None]
    centred = (gq.codes.double() - 8).view(N, -1, group) * scales
    uncentred = gq.codes.double().view(N, -1, group) * scales
    ref = x.double() @ gq.dequantize().double().t()  # (float64: float32 rounding is not small
    err = (to_kernel(gq)(x).double() - ref).norm()  # beside int16 rounding)
    err_centred = (x_err @ centred.view(N, K).t()).norm()
    err_uncentred = (x_err @ uncentred.view(N, K).t()).norm()
    assert err_uncentred > 1.3 * err_centred  # the difference the centring term makes
    assert 0.8 * err_centred < err < 1.2 * err_centred, (err, err_centred, err_uncentred)


def test_int8_codes_take_16_bit_activations():
    """i8 codes (Q8_0 tables, LM heads) run against int16 activations too: error ~1e-5, where
    int8 activations give ~5e-3 (the logits' noise that would flip near-tied greedy tokens)."""
    gq = quantize_int8_grouped(torch.randn(N, K), 32)
    x = torch.randn(2, K)
    assert _rel_err(to_kernel(gq)(x), x @ gq.dequantize().t()) < 1e-4
