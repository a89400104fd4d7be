"""LoRALinear: a linear layer plus the low-rank updates of up to `max_loras` adapters, applied
per token in one batched shrink and one batched expand.

The base layer runs unchanged (dense, GGUF, int4 ... whatever its quant method is). Each slot s
of each output slice i (q/k/v of a fused qkv_proj, gate/up of gate_up_proj) owns `max_rank`
rows of the stacked A and the matching columns of the stacked B:

    lora_a  [S*L*R, in]     rows (i*L + s)*R .. +r: A of slice i in slot s (rank r <= R, rest 0)
    lora_b  [out, S*L*R]    rows of slice i x those columns: scaling * B (zero elsewhere)

    y = base(x) + ((x lora_a^T) * mask) lora_b^T,   mask[t, c] = 1 iff column c's slot is
                                                    token t's adapter slot

so a token of slot s sees exactly its adapter's x A_i^T B_i^T scaling in every slice, a base
token (slot L) sees zero, and a step's tokens under L different adapters cost two matmuls per
layer, with no loop over requests or adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.forward_context import current_lora_mapping


@dataclass
class LoRAMapping:
    """Which adapter slot each token of a step runs under (built once per step by the manager,
    read by every LoRALinear through the forward context)."""

    token_slots: torch.Tensor  # [T] long: the token's slot, num_slots for the base model
    num_slots: int
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def mask(self, column_slot: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[T, width] 0/1: column c of the shrink output belongs to token t's slot. Layers of
        the same width share one mask per step."""
        key = column_slot.numel()
        mask = self._masks.get(key)
        if mask is None or mask.dtype != dtype:
            mask = (self.token_slots[:, None] == column_slot[None, :]).to(dtype)
            self._masks[key] = mask
        return mask


class LoRALinear(nn.Module):
    """Wraps a LinearBase (tp_size 1); call as the layer it replaces."""

    def __init__(self, base_layer: nn.Module, max_loras: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        if getattr(base_layer, "tp_size", 1) != 1:
            raise NotImplementedError("LoRA runs at tensor-parallel size 1 only")
        self.base_layer = base_layer
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.output_sizes: list[int] = list(base_layer.output_sizes_per_partition)
        self.input_size: int = base_layer.input_size_per_partition
        width = len(self.output_sizes) * max_loras * max_rank
        self.register_buffer("lora_a", torch.zeros(width, self.input_size, dtype=dtype,
                                                   device=device), persistent=False)
        self.register_buffer("lora_b", torch.zeros(sum(self.output_sizes), width, dtype=dtype,
                                                   device=device), persistent=False)
        column_slot = torch.arange(width, device=device) // max_rank % max_loras
        self.register_buffer("column_slot", column_slot, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        y = self.base_layer(x)
        mapping = current_lora_mapping()
        if mapping is None:
            return y
        shrunk = F.linear(x, self.lora_a)  # [T, S*L*R]
        shrunk = shrunk * mapping.mask(self.column_slot, shrunk.dtype)
        return y + F.linear(shrunk, self.lora_b)

    def clear_slot(self, slot: int) -> None:
        for i in range(len(self.output_sizes)):
            start = self._column(i, slot)
            self.lora_a[start : start + self.max_rank].zero_()
            self.lora_b[:, start : start + self.max_rank].zero_()

    def set_slot(self, slot: int, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Output slice `index` of slot `slot` gets a [r, in] and b [out_i, r] (b already
        scaled); call clear_slot first."""
        rank = a.shape[0]
        assert rank <= self.max_rank and b.shape[1] == rank
        start = self._column(index, slot)
        row = sum(self.output_sizes[:index])
        self.lora_a[start : start + rank].copy_(a)
        self.lora_b[row : row + self.output_sizes[index], start : start + rank].copy_(b)

    def _column(self, index: int, slot: int) -> int:
        return (index * self.max_loras + slot) * self.max_rank

    def extra_repr(self) -> str:
        return f"slots={self.max_loras}, max_rank={self.max_rank}"
