"""How the Mamba mixers split over tensor-parallel ranks (vLLM's layout), and why the
Mamba-based families still refuse pipeline parallelism, in one place for their model classes.

Every split is along channels (Mamba) or heads (Mamba2), contiguous per rank, so a rank's conv
channels, SSM state rows and gated-norm channels are those of its own in_proj rows:

    Mamba1  in_proj [x | z]             each half split by channel (I/tp rows each)
            conv1d, A_log, D, dt_proj   the rank's I/tp channels
            x_proj                      row-parallel: dt, B, C mix every channel -> all-reduce
            out_proj                    row-parallel
    Mamba2  in_proj [z | x | B | C | dt]  z, x by head (I/tp), dt by head (H/tp); B and C by
                                          group: G/tp groups, or, when G < tp, the one group of
                                          the rank's heads (replicated on tp/G ranks)
            conv1d over [x | B | C]     the same channels as in_proj's x, B, C rows
            A_log, D, dt_bias           by head
            norm (gated, per group)     the rank's whole groups; a group shared by ranks sums
                                        its squares over them (all-reduce)
            out_proj                    row-parallel

The split arithmetic (which rows a rank holds) is plain integers (config/state_cache.py sizes
each rank's state slot from the same functions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pagedllm.config.state_cache import channel_share, mamba2_group_share

MAMBA_PARALLEL_REFUSAL = (
    "its Mamba mixers keep per-request conv/SSM states in a state cache that is not split "
    "by pipeline stage (each stage would need the slots of its own Mamba layers only), and "
    "the hybrid model does not pass hidden states between stages. Not done yet: run these "
    "models with pipeline_parallel_size=1 (tensor_parallel_size and data_parallel_size work)"
)

__all__ = ["MAMBA_PARALLEL_REFUSAL", "RowPieces", "channel_share", "mamba2_group_share"]


class RowPieces:
    """A parameter whose dim 0 stacks checkpoint pieces, each split over the ranks on its own:
    piece i has sizes[i] rows, this rank holds `counts[i]` of them from `starts[i]`.

    load(param, loaded): this rank's rows of the whole checkpoint tensor (conv1d's [C, 1, K]
    is reshaped to the parameter's trailing shape)."""

    def __init__(self, sizes: Sequence[int], shares: Sequence[tuple[int, int]]) -> None:
        self.sizes = list(sizes)
        self.starts = [start for start, _ in shares]
        self.counts = [count for _, count in shares]

    @property
    def rows(self) -> int:
        return sum(self.counts)

    def rank_rows(self, loaded: torch.Tensor) -> torch.Tensor:
        pieces = loaded.split(self.sizes, dim=0)
        return torch.cat([p.narrow(0, s, c) for p, s, c in zip(pieces, self.starts, self.counts)])

    def attach(self, param: nn.Parameter) -> nn.Parameter:
        def load(param: nn.Parameter, loaded: torch.Tensor) -> None:
            loaded = loaded.reshape(sum(self.sizes), *param.shape[1:])
            with torch.no_grad():
                param.copy_(self.rank_rows(loaded).to(param.dtype))

        param.weight_loader = load  # type: ignore[attr-defined]
        return param

    @classmethod
    def even(cls, size: int, tp_size: int, tp_rank: int) -> RowPieces:
        """One piece split evenly (Mamba's channels, Mamba2's heads)."""
        return cls([size], [channel_share(size, tp_size, tp_rank)])
