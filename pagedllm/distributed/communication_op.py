"""The collectives the layers call (vLLM's names); identities at tensor-parallel size 1."""

from __future__ import annotations

import torch

from pagedllm.distributed.parallel_state import get_tp_group


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over the tensor-parallel ranks (a row-parallel layer's partial products)."""
    return get_tp_group().all_reduce(x)


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The ranks' slices concatenated along `dim` (a vocab-parallel LM head's logits)."""
    return get_tp_group().all_gather(x, dim)
