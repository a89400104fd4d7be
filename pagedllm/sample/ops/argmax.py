"""argmax over the vocabulary, the last step of every greedy token and random draw."""

from __future__ import annotations

import torch

from pagedllm.kernels import fits_cpu_float32


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) for [B, V]: the compiled kernel (kernels/csrc/argmax.cpp, ~15x
    faster than ATen's reduction on the CPU) where it applies, else ATen's."""
    if x.dim() == 2 and x.shape[1] > 0 and fits_cpu_float32(x):
        return torch.ops.pagedllm.argmax_rows(x)
    return x.argmax(dim=-1)
