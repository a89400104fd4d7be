"""LoRALinear: a linear layer plus the low-rank updates of up to `max_loras` adapters, applied
to each token under its own adapter (never a loop over requests).

The base layer runs unchanged (dense, GGUF, int4 ... whatever its quant method is). Slot s holds
one adapter for every output slice i of the layer (q/k/v of a fused qkv_proj, gate/up of
gate_up_proj), each of rank r <= R padded with zeros to R:

    lora_a[s]  [S*R, in]     rows i*R .. i*R+r: A of slice i
    lora_b[s]  [S*R, out]    rows i*R .. i*R+r x the columns of slice i: (scaling * B of slice i)^T

    y[t] = base(x)[t] + (lora_a[s] x[t]) lora_b[s]     s = the token's slot; base tokens: + 0

On the CPU with pagedllm's kernels one call does every token (kernels/csrc/lora.cpp, also run
inside the fused decoder stack); elsewhere the tokens are grouped by slot (LoRAMapping.perm and
.segments) and each slot present costs one shrink and one expand matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.forward_context import current_lora_mapping
from pagedllm.model_executor.custom_op import compiled_cpu_kernels_apply


@dataclass(frozen=True)
class LoRAMapping:
    """Which tokens of a step run under which adapter slot (built once per step, read by every
    LoRALinear through the forward context)."""

    token_slots: torch.Tensor  # [T] long: each token's slot; num_slots for the base model
    perm: torch.Tensor  # [N] long: the adapter tokens' rows, grouped by slot
    segments: tuple[tuple[int, int, int], ...]
    """(slot, start, end): perm[start:end] are the tokens of slot `slot`."""

    @classmethod
    def from_token_slots(cls, token_slots: np.ndarray, num_slots: int,
                         device: torch.device | str = "cpu") -> LoRAMapping | None:
        """token_slots [T]: each token's slot, num_slots for the base model; None when no
        token has an adapter."""
        tokens = np.flatnonzero(token_slots < num_slots)
        if len(tokens) == 0:
            return None
        order = tokens[np.argsort(token_slots[tokens], kind="stable")]
        slots, counts = np.unique(token_slots[order], return_counts=True)
        ends = np.cumsum(counts)
        segments = tuple((int(s), int(e - c), int(e)) for s, c, e in zip(slots, counts, ends))
        return cls(torch.from_numpy(np.ascontiguousarray(token_slots, dtype=np.int64)).to(device),
                   torch.from_numpy(order).to(device), segments)


class LoRALinear(nn.Module):
    """Wraps a LinearBase; call as the layer it replaces.

    Under tensor parallelism a slot holds the rank's slice of the adapter, as the base layer
    holds its slice of the weight: a column-parallel layer keeps A whole and B's rows of its
    outputs (each packed shard's, QKV heads included); a row-parallel layer keeps A's columns of
    its inputs and B whole, and its partial x A^T is all-reduced before B (the base layer's own
    output is already summed)."""

    def __init__(self, base_layer: nn.Module, max_loras: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.row_parallel = (getattr(base_layer, "tp_size", 1) > 1
                             and base_layer.parallel_role == "row")
        """The shrunk x A^T is a partial sum over the ranks (all-reduced before B)."""
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.output_sizes: list[int] = list(base_layer.output_sizes_per_partition)
        self.input_size: int = base_layer.input_size_per_partition
        width = len(self.output_sizes) * max_rank
        self.register_buffer("lora_a", torch.zeros(max_loras, width, self.input_size,
                                                   dtype=dtype, device=device), persistent=False)
        self.register_buffer("lora_b", torch.zeros(max_loras, width, sum(self.output_sizes),
                                                   dtype=dtype, device=device), persistent=False)
        self.compiled = (compiled_cpu_kernels_apply() and device.type == "cpu"
                         and dtype == torch.float32)
        """The compiled kernel computes the updates (float32 on the CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        y = self.base_layer(x)
        mapping: LoRAMapping | None = current_lora_mapping()
        if mapping is None:
            return y
        if self.row_parallel:
            return self._forward_row_parallel(x, y, mapping)
        if self.compiled and x.dim() == 2:
            return torch.ops.pagedllm.lora_add_rows(y, x, self.lora_a, self.lora_b,
                                                    mapping.token_slots)
        xs = x.index_select(0, mapping.perm)  # [N, in]
        ys = y.index_select(0, mapping.perm)  # [N, out]
        for slot, start, end in mapping.segments:
            shrunk = F.linear(xs[start:end], self.lora_a[slot])  # [n, S*R]
            ys[start:end].addmm_(shrunk, self.lora_b[slot])
        # NOTE: perm has no repeats, so a row copy does what index_add_ would (serial on the
        # CPU, and slower than the layer itself at a few hundred tokens)
        return y.index_copy_(0, mapping.perm, ys)

    def _forward_row_parallel(self, x: torch.Tensor, y: torch.Tensor,
                              mapping: LoRAMapping) -> torch.Tensor:
        from pagedllm.distributed import tensor_model_parallel_all_reduce

        xs = x.index_select(0, mapping.perm)  # [N, in / tp]
        shrunk = xs.new_zeros(xs.shape[0], self.lora_a.shape[1])  # [N, S*R]
        for slot, start, end in mapping.segments:
            shrunk[start:end] = F.linear(xs[start:end], self.lora_a[slot])
        # NOTE: one all-reduce per layer call on every rank (the ranks share the mapping)
        shrunk = tensor_model_parallel_all_reduce(shrunk)
        ys = y.index_select(0, mapping.perm)
        for slot, start, end in mapping.segments:
            ys[start:end].addmm_(shrunk[start:end], self.lora_b[slot])
        return y.index_copy_(0, mapping.perm, ys)

    def clear_slot(self, slot: int) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()

    def set_slot(self, slot: int, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Output slice `index` of slot `slot` gets a [r, in] and b [out_i, r] (b already
        scaled); call clear_slot first."""
        base = self.base_layer
        if getattr(base, "tp_size", 1) > 1:  # this rank's slice (the base layer's own rule)
            if base.parallel_role == "column":
                b = base._rank_slice(b, index)
            elif base.parallel_role == "row":
                a = base._rank_slice(a, index)
        rank = a.shape[0]
        assert rank <= self.max_rank and b.shape[1] == rank
        start = index * self.max_rank
        column = sum(self.output_sizes[:index])
        self.lora_a[slot, start : start + rank].copy_(a)
        self.lora_b[slot, start : start + rank, column : column + self.output_sizes[index]].copy_(
            b.t())

    def extra_repr(self) -> str:
        return f"slots={self.max_loras}, max_rank={self.max_rank}"
