"""Mixture of experts: top-k softmax routing and the experts' gated MLPs, each expert run only on
the tokens routed to it (token slots grouped by expert, one matmul pair per expert hit, results
weighted and index_add-ed back), never densely over all experts.

Expert weights are stacked per expert (HF transformers 5's fused layout):
    gate_up_proj [E, 2*I, H]  rows [ gate: I | up: I ]
    down_proj    [E, H, I]
Checkpoints that store one matrix per expert (`...experts.3.w1.weight`, Mixtral; or
`...experts.3.gate_proj.weight`, Qwen MoE) load through `ExpertWeightMapper`.

Tensor parallelism splits every expert TP-style: rank r holds each expert's gate/up rows and
down columns [r*I/tp, (r+1)*I/tp), so each rank's weighted sum is a partial one and the layer
all-reduces it (one all-reduce per MoE layer, as for a dense MLP). The router is replicated.
With expert parallelism (--enable-expert-parallel) rank r holds experts [r*E/tp, (r+1)*E/tp)
whole and computes only the tokens routed to them; the all-reduce sums the ranks' experts.

The expert weights and matmuls belong to a FusedMoEMethodBase from the quantization scope (float:
UnquantizedFusedMoEMethod); the layer keeps the routing.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import (
    divide,
    get_ep_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from pagedllm.model_executor.layers.activation import get_act_and_mul
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs
from pagedllm.model_executor.quantization.base import FusedMoEMethodBase
from pagedllm.model_executor.quantization.scope import scoped_moe_method


def select_experts(
    router_logits: torch.Tensor,  # [T, E]
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax (in float32) -> top-k; renormalize: the k weights rescaled to sum to 1.
    Returns (weights [T, k] float32, expert ids [T, k] long)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class UnquantizedFusedMoEMethod(FusedMoEMethodBase):
    """Stacked expert weights in the model dtype."""

    def create_weights(self, layer, num_experts, hidden_size, intermediate_size, params_dtype):
        gate_up = torch.empty(num_experts, 2 * intermediate_size, hidden_size, dtype=params_dtype)
        down = torch.empty(num_experts, hidden_size, intermediate_size, dtype=params_dtype)
        layer.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)  # [E, 2*I, H]
        layer.down_proj = nn.Parameter(down, requires_grad=False)  # [E, H, I]
        for param in (layer.gate_up_proj, layer.down_proj):
            set_weight_attrs(param, weight_loader=layer.weight_loader)

    def apply(self, layer, expert, x):  # [n, H] -> [n, H]
        gate_up = F.linear(x, layer.gate_up_proj[expert])
        return F.linear(layer.act_fn(gate_up), layer.down_proj[expert])


class FusedMoE(nn.Module):
    """The routed experts of one layer: (hidden_states, router_logits) -> weighted expert sum.

    prefix: the module's name in the model (`model.layers.0.mlp.experts`)."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        renormalize: bool = True,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.tp_size = get_tensor_model_parallel_world_size()
        self.tp_rank = get_tensor_model_parallel_rank()
        ep = get_ep_group()
        self.expert_parallel = ep is not None and ep.world_size > 1
        """Whole experts per rank (else every expert's intermediate slice per rank)."""
        split = 1 if self.expert_parallel else self.tp_size
        self.intermediate_size_per_partition = divide(intermediate_size, split)
        self.num_local_experts = divide(num_experts, self.tp_size // split)
        self.first_expert = self.tp_rank * self.num_local_experts if self.expert_parallel else 0
        self.renormalize = renormalize
        self.prefix = prefix
        self.act_fn = get_act_and_mul(hidden_act)
        # NOTE: a model built inside quantization_scope(config) gets the config's method.
        self.quant_method = scoped_moe_method(self, prefix) or UnquantizedFusedMoEMethod()
        self.quant_method.create_weights(
            self, self.num_local_experts, hidden_size, self.intermediate_size_per_partition,
            torch.get_default_dtype(),
        )  # fmt: skip

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, H]
        router_logits: torch.Tensor,  # [T, E]
    ) -> torch.Tensor:  # [T, H]
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize)
        return self.forward_routed(hidden_states, weights, ids)

    def forward_routed(
        self,
        hidden_states: torch.Tensor,  # [T, H]
        weights: torch.Tensor,  # [T, k] float32: each chosen expert's weight
        ids: torch.Tensor,  # [T, k] long: the chosen experts
    ) -> torch.Tensor:  # [T, H]
        """The experts' weighted sum for routing decided elsewhere (DeepSeek's grouped top-k)."""
        # Token slots (token, k) sorted by expert: expert e owns slots[offsets[e]:offsets[e+1]].
        slots = ids.flatten().argsort(stable=True)  # [T*k]
        counts = torch.bincount(ids.flatten(), minlength=self.num_experts).tolist()
        flat_weights = weights.flatten()
        out = torch.zeros_like(hidden_states)
        start = 0
        for expert, count in enumerate(counts):
            begin, start = start, start + count
            local = expert - self.first_expert  # its weights' index on this rank
            if count == 0 or not 0 <= local < self.num_local_experts:
                continue
            expert_slots = slots[begin:start]
            tokens = expert_slots // self.top_k
            expert_out = self.quant_method.apply(self, local, hidden_states[tokens])
            scale = flat_weights[expert_slots].unsqueeze(-1).to(expert_out.dtype)
            out.index_add_(0, tokens, expert_out * scale)
        return tensor_model_parallel_all_reduce(out) if self.tp_size > 1 else out

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: tuple[int, str] | None = None
    ) -> None:
        """Whole stacked tensor (shard_id None), or one expert's "gate" / "up" / "down" matrix
        (the float weights' loader; a quantized method registers its own)."""
        if shard_id is None:
            default_weight_loader(param, self._rank_slice(param, loaded))
            return
        expert, which = shard_id
        local = expert - self.first_expert
        if not 0 <= local < self.num_local_experts:
            return  # another rank's expert
        rows = param.data[local]
        size = self.intermediate_size_per_partition
        if which in ("gate", "up"):
            offset = 0 if which == "gate" else size
            rows = rows.narrow(0, offset, size)
        loaded = self.expert_matrix_slice(loaded, which)
        if rows.shape != loaded.shape:
            raise ValueError(
                f"expert {expert} {which} has shape {tuple(loaded.shape)}, "
                f"expected {tuple(rows.shape)}"
            )
        rows.copy_(loaded)

    def expert_matrix_slice(self, loaded: torch.Tensor, which: str) -> torch.Tensor:
        """This rank's part of one expert's checkpoint matrix: gate / up [I, H] -> its rows,
        down [H, I] -> its columns (the whole matrix under expert parallelism or at tp 1)."""
        if self.tp_size == 1 or self.expert_parallel:
            return loaded
        size = self.intermediate_size_per_partition
        start = self.tp_rank * size
        return loaded.narrow(0 if which in ("gate", "up") else 1, start, size)

    def _rank_slice(self, param: nn.Parameter, loaded: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole stacked tensor: gate_up [E, 2I, H] -> [E, 2I/tp, H]
        (each of gate and up split on its own), down [E, H, I] -> [E, H, I/tp]."""
        if self.tp_size == 1:
            return loaded
        if self.expert_parallel:  # this rank's whole experts
            return loaded.narrow(0, self.first_expert, self.num_local_experts)
        size = self.intermediate_size_per_partition
        start = self.tp_rank * size
        if param is self.down_proj:
            return loaded.narrow(2, start, size)
        gate, up = loaded.split(self.intermediate_size, dim=1)
        return torch.cat([gate.narrow(1, start, size), up.narrow(1, start, size)], dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, "
            f"intermediate_size={self.intermediate_size}, renormalize={self.renormalize}"
        )


class ExpertWeightMapper:
    """NameMapper (see weight_utils) for per-expert checkpoint matrices:
    `<prefix>.experts.<e>.<gate|up|down name>.weight` -> our `<prefix>.experts.<param>`, shard
    (e, "gate" | "up" | "down")."""

    def __init__(self, num_experts: int, gate: str, up: str, down: str) -> None:
        self.num_experts = num_experts
        self.which = {gate: "gate", up: "up", down: "down"}
        names = "|".join(map(re.escape, self.which))
        self.pattern = re.compile(rf"^(.*\.experts)\.(\d+)\.({names})\.weight$")

    def __call__(self, name: str) -> tuple[str, Any, int] | None:
        match = self.pattern.match(name)
        if match is None:
            return None
        prefix, expert, which = match[1], int(match[2]), self.which[match[3]]
        if which == "down":
            return f"{prefix}.down_proj", (expert, which), self.num_experts
        return f"{prefix}.gate_up_proj", (expert, which), 2 * self.num_experts
