"""The compiled float32 GEMV against float64 linear, and batch invariance: a row's output is the
same bits whichever batch (and so whichever tile shape) it is computed in."""

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


_U = 2.0**-24  # float32 unit roundoff


def _error_bound(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """How far a float32 sum of K products may be from the exact one, whatever the order: each
    of the K products and K - 1 additions (+ the bias) rounds once, so within
    gamma_(K+1) * sum |terms| (gamma_n = n u / (1 - n u)), plus the output's own rounding."""
    K = x.shape[1]
    n = K + 2
    gamma = n * _U / (1 - n * _U)
    magnitude = x.double().abs() @ w.double().abs().T
    if bias is not None:
        magnitude = magnitude + bias.double().abs()
    return gamma * magnitude


_F32, _BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(
    "N,K,dtype",
    [(64, 96, _F32), (67, 100, _F32), (3, 8, _F32), (130, 576, _F32), (67, 100, _BF16),
     (130, 576, _BF16)],
)  # fmt: skip
@pytest.mark.parametrize("with_bias", [False, True])
def test_dense_linear_matches_float64_and_is_batch_invariant(
    N: int, K: int, with_bias: bool, dtype: torch.dtype
):
    g = torch.Generator().manual_seed(N * K)
    w = torch.randn(N, K, generator=g).to(dtype)  # (bfloat16: widened exactly in the kernel)
    bias = torch.randn(N, generator=g) if with_bias else None
    x = torch.randn(100, K, generator=g)
    alone = torch.cat([torch.ops.pagedllm.dense_linear(x[i : i + 1], w, bias) for i in range(100)])
    wf = w.float()
    expected = torch.nn.functional.linear(
        x.double(), wf.double(), None if bias is None else bias.double()
    )
    assert ((alone.double() - expected).abs() <= _error_bound(x, wf, bias)).all()
    # batch sizes mix 3-, 2- and 1-row passes differently (and, from 8 rows on AVX-512, 3-, 2-
    # and 1-pair tiles with an odd row's zero partner); past 96 rows span two row blocks
    for M in [*range(2, 34), 95, 96, 97, 100]:
        batched = torch.ops.pagedllm.dense_linear(x[:M], w, bias)
        assert torch.equal(batched, alone[:M]), M
    # and rows at any offset of a batch: the same bits as at its start
    batched = torch.ops.pagedllm.dense_linear(x[3:40], w, bias)
    assert torch.equal(batched, alone[3:40])


def test_dense_linear_past_the_gemv_limit_uses_a_gemm():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 64, generator=g), torch.randn(24, 64, generator=g)
    out = torch.ops.pagedllm.dense_linear(x, w, None)
    torch.testing.assert_close(out, x @ w.T, rtol=1e-5, atol=1e-5)
