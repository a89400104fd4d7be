"""GGUF blocks decode into codes + per-group scale/zero that reproduce gguf-py's dequantization
exactly, and each GGUF type's quantized linear matches its dequantized float reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from pagedllm.benchmarks.random_blocks import FP16_FIELDS, random_blocks  # noqa: E402
from pagedllm.model_executor.quantization.gguf_blocks import decode_gguf_blocks  # noqa: E402
from pagedllm.model_executor.quantization.group_quant import to_kernel  # noqa: E402
from pagedllm.model_executor.quantization.kernels import (  # noqa: E402
    GroupedDequantWeight,
    Int4GroupWeight,
    PackedGroupWeight,
    SplitInt4Weight,
)
from tests.quantization.bounds import INT16_ACT_REL  # noqa: E402

ROWS, COLS = 32, 512
QTYPES = [T[name] for name in FP16_FIELDS]  # every type with its fp16 fields known
KERNEL_OF = {T.Q4_0: Int4GroupWeight, T.Q4_1: Int4GroupWeight, T.Q4_K: Int4GroupWeight,
             T.Q5_0: SplitInt4Weight, T.Q5_1: SplitInt4Weight, T.Q8_0: SplitInt4Weight,
             T.Q5_K: SplitInt4Weight, T.Q6_K: GroupedDequantWeight}  # fmt: skip


def _random_blocks(qtype, seed: int = 0) -> np.ndarray:
    """Random bytes with sane fp16 scales: every bit pattern of the codes and sub-scales."""
    return random_blocks(qtype, ROWS, COLS, np.random.default_rng(seed))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_decode_reproduces_gguf_dequantize(qtype):
    data = _random_blocks(qtype)
    reference = dequantize(data, qtype).reshape(ROWS, COLS)
    decoded = decode_gguf_blocks(data, qtype, (ROWS, COLS))
    np.testing.assert_array_equal(decoded.dequantize().numpy(), reference)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gguf_linear_matches_dequantized_reference_pytorch_kernels(
    qtype, dtype, pytorch_kernels_only
):
    data = _random_blocks(qtype, seed=1)
    reference = torch.from_numpy(dequantize(data, qtype).reshape(ROWS, COLS).copy())
    kernel = to_kernel(decode_gguf_blocks(data, qtype, (ROWS, COLS)))
    assert type(kernel) is KERNEL_OF[qtype]
    torch.manual_seed(0)
    x = torch.randn(4, COLS, dtype=dtype)
    expected = x.float() @ reference.t()
    err = float((kernel(x).float() - expected).norm() / expected.norm())
    exact = dtype == torch.float32 and KERNEL_OF[qtype] is GroupedDequantWeight
    assert err < (1e-6 if exact else 6e-3), err


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 4, 64])
def test_gguf_linear_matches_dequantized_reference_compiled_kernel(qtype, rows):
    data = _random_blocks(qtype, seed=1)
    reference = torch.from_numpy(dequantize(data, qtype).reshape(ROWS, COLS).copy())
    kernel = to_kernel(decode_gguf_blocks(data, qtype, (ROWS, COLS)))
    assert type(kernel) is PackedGroupWeight
    assert kernel.u4 == (qtype in (T.Q4_0, T.Q4_1, T.Q4_K))
    torch.testing.assert_close(kernel.dequantize(), reference, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    x = torch.randn(rows, COLS)
    expected = x @ reference.t()
    err = float((kernel(x) - expected).norm() / expected.norm())
    # activations quantized to int16 per 32 columns, whatever the row count
    assert 0 < err < INT16_ACT_REL, err
