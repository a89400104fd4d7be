"""The compiled argmax against torch.argmax: ties, NaN, infinities, signed zeros, row tails."""

import pytest
import torch

from pagedllm.kernels import cpu_kernels_available
from pagedllm.sample.ops.argmax import argmax_rows

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")


def _rows(V: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(V)
    x = torch.randn(12, V, generator=g)
    x[1] = 0.0  # all tied: the first index
    x[2, V // 2] = float("nan")
    x[3, -1] = float("nan")  # a NaN in the tail past the vector loop
    x[3, 0] = float("inf")
    x[4] = float("-inf")
    x[5, -1] = 100.0  # the maximum in the tail
    x[6] = torch.randint(0, 3, (V,), generator=g).float()  # many ties of the maximum
    x[7] = 0.0
    x[7, : V // 2] = -0.0  # signed zeros compare equal
    x[8, 0], x[8, V - 1] = float("inf"), float("inf")
    x[9] = float("-inf")
    x[9, V // 3] = -1e30
    x[10, 0] = float("nan")
    x[10, 1] = float("nan")
    return x


@pytest.mark.parametrize("V", [3, 7, 8, 9, 50, 4099, 49152])
def test_argmax_rows_matches_torch(V):
    x = _rows(V)
    assert torch.equal(torch.ops.pagedllm.argmax_rows(x), x.argmax(dim=-1))


def test_argmax_rows_non_contiguous_and_fallbacks():
    x = torch.randn(6, 100)
    view = x[::2, 3:]
    assert torch.equal(argmax_rows(view), view.argmax(dim=-1))
    half = x.half()  # not float32: ATen's argmax
    assert torch.equal(argmax_rows(half), half.argmax(dim=-1))
    assert argmax_rows(torch.empty(0, 5)).shape == (0,)
