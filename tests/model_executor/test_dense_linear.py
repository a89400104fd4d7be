"""The compiled float32 GEMV against float64 linear, and batch invariance: a row's output is the
same bits whichever batch (and so whichever tile shape) it is computed in."""

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


@pytest.mark.parametrize("N,K", [(64, 96), (67, 100), (3, 8), (130, 576)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dense_linear_matches_float64_and_is_batch_invariant(N: int, K: int, with_bias: bool):
    g = torch.Generator().manual_seed(N * K)
    w = torch.randn(N, K, generator=g)
    bias = torch.randn(N, generator=g) if with_bias else None
    x = torch.randn(100, K, generator=g)
    alone = torch.cat([torch.ops.pagedllm.dense_linear(x[i : i + 1], w, bias) for i in range(100)])
    expected = torch.nn.functional.linear(
        x.double(), w.double(), None if bias is None else bias.double()
    )
    torch.testing.assert_close(alone.double(), expected, rtol=1e-5, atol=1e-4)
    # batch sizes mix 3-, 2- and 1-row passes differently, and past 96 rows span two row blocks
    for M in [*range(2, 34), 95, 96, 97, 100]:
        batched = torch.ops.pagedllm.dense_linear(x[:M], w, bias)
        assert torch.equal(batched, alone[:M]), M


def test_dense_linear_past_the_gemv_limit_uses_a_gemm():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 64, generator=g), torch.randn(24, 64, generator=g)
    out = torch.ops.pagedllm.dense_linear(x, w, None)
    torch.testing.assert_close(out, x @ w.T, rtol=1e-5, atol=1e-5)
