"""Tensor parallelism for the Transformers fallback, from transformers' own `base_model_tp_plan`.

A transformers config names, per module pattern of its base model, how the module splits for
tensor parallelism ("layers.*.self_attn.q_proj": "colwise", "layers.*.self_attn.o_proj":
"rowwise", ...). Under -tp N each planned nn.Linear is swapped for one holding this rank's slice:

    colwise  W [out / N, in]   (bias sliced too): this rank's heads / MLP columns
    rowwise  W [out, in / N]   the partial products all-reduced, then the bias added once

transformers' attention modules reshape with -1 heads, so they run this rank's heads as they
come; the paged Attention layer holds the same share (layers.Attention divides by N). The token
embedding, the norms and the LM head stay replicated (the plan's "replicated*" entries too).
Any other style (packed or grouped experts, sequence parallel, ...) is refused by name.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import (
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)

SPLIT_STYLES = ("colwise", "rowwise")
REPLICATED_STYLES = ("replicated", "replicated_with_grad_allreduce")


class PlannedLinear(nn.Module):
    """An nn.Linear's slice for this rank ("colwise": output rows, "rowwise": input columns)."""

    def __init__(self, linear: nn.Linear, style: str, tp_size: int, tp_rank: int) -> None:
        super().__init__()
        self.style, self.tp_size, self.tp_rank = style, tp_size, tp_rank
        out_features, in_features = linear.out_features, linear.in_features
        self.split_dim = 0 if style == "colwise" else 1
        shape = ((divide(out_features, tp_size), in_features) if style == "colwise"
                 else (out_features, divide(in_features, tp_size)))  # fmt: skip
        dtype, device = linear.weight.dtype, linear.weight.device
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype, device=device),
                                   requires_grad=False)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]
        self.bias: nn.Parameter | None = None
        if linear.bias is not None:  # (rowwise: whole, added once after the all-reduce)
            size = shape[0] if style == "colwise" else out_features
            self.bias = nn.Parameter(torch.empty(size, dtype=dtype, device=device),
                                     requires_grad=False)
            self.bias.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        dim = 0 if param.dim() == 1 else self.split_dim
        if param.dim() == 1 and self.style == "rowwise":
            part = loaded
        else:
            width = param.shape[dim]
            part = loaded.narrow(dim, self.tp_rank * width, width)
        if part.shape != param.shape:
            raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not split "
                             f"into {tuple(param.shape)} ({self.style}, tp={self.tp_size})")
        param.data.copy_(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "colwise":
            return F.linear(x, self.weight, self.bias)
        out = tensor_model_parallel_all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.style}, weight={tuple(self.weight.shape)}, tp={self.tp_rank}/{self.tp_size}"


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(key).replace(r"\*", r"\d+"))


def shard_by_tp_plan(hf_model: nn.Module, config: Any, architecture: str) -> int:
    """Swap the planned linears of hf_model's base model for this rank's slices; return how many
    were split. ValueError where transformers gives no plan or one with a style not handled."""
    tp_size = get_tensor_model_parallel_world_size()
    if tp_size == 1:
        return 0
    plan: dict[str, str] = dict(getattr(config, "base_model_tp_plan", None) or {})
    if not plan:
        raise ValueError(f"{architecture} (Transformers fallback) does not run with "
                         f"tensor_parallel_size={tp_size}: its transformers config has no "
                         f"base_model_tp_plan saying how its layers split")
    unknown = sorted({f"{key}: {style}" for key, style in plan.items()
                      if style not in SPLIT_STYLES + REPLICATED_STYLES})
    if unknown:
        raise ValueError(f"{architecture} (Transformers fallback) does not run with "
                         f"tensor_parallel_size={tp_size}: its base_model_tp_plan has entries "
                         f"the fallback does not split ({', '.join(unknown)})")
    splits = [(_pattern(key), style) for key, style in plan.items() if style in SPLIT_STYLES]
    rank = get_tensor_model_parallel_rank()
    base = hf_model.base_model
    count = 0
    for name, module in list(base.named_modules()):
        style = next((s for p, s in splits if p.fullmatch(name)), None)
        if style is None:
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{architecture}: base_model_tp_plan splits {name} ({style}), a "
                             f"{type(module).__name__}, not a linear layer")
        parent, _, leaf = name.rpartition(".")
        setattr(base.get_submodule(parent), leaf, PlannedLinear(module, style, tp_size, rank))
        count += 1
    if count == 0:
        raise ValueError(f"{architecture}: base_model_tp_plan matched no linear layer")
    return count
