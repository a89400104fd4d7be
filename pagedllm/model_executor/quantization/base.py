"""The quantization seam: a method creates a layer's weights, computes with them, and may repack
them once after loading. Linear layers and the MoE experts never branch on the method.

A config hands each layer its method by the layer's module name (`prefix`), so layers named in
`modules_to_not_convert` stay float (`is_layer_skipped`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class FusedWeightSpec:
    """A linear layer's weight in a layout the compiled CPU kernels compute, for execution
    strategies that call them directly (worker/fused_cpu_stack.py) instead of `apply`.

    layout "dense": tensors {"weight": float32 [out, in]}; "packed_group": tensors {"codes",
    "scales", "mins"} of quantization/kernels.py PackedGroupWeight, with its group_size and u4;
    "kquant": tensors {"codes", "sub_scales", "sub_mins", "super_scales", "super_mins"} of
    kquant_weight.py KQuantWeight, with its group_size, u4 and code offset; "q5": tensors
    {"codes", "scales", "mins"} of q5_weight.py Q5Weight, with its code offset.
    The bias is not part of it (it stays the layer's, in the model dtype).
    """

    layout: Literal["dense", "packed_group", "kquant", "q5"]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    group_size: int = 0
    u4: bool = False
    activation_bits: int = 16
    """packed_group: 16, or 8 for int8 activations (--quantized-activation-dtype int8)."""
    offset: int = 0
    """kquant / q5: what its codes are centred by."""


class QuantizeMethodBase(ABC):
    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_sizes: list[int],
        bias: bool,
        params_dtype: torch.dtype,
    ) -> None:
        """Register the layer's parameters (each with a `weight_loader` attribute).

        input_size / output_sizes: this tensor-parallel rank's (the layer's `*_per_partition`
        sizes); output_sizes has the rows of each shard of a merged layer (one if not merged).
        """

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x: [T, input_size] -> [T, sum(output_sizes)], bias included."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights into the layout `apply` wants (default: nothing to do)."""

    def fused_weight_spec(self, layer: nn.Module) -> FusedWeightSpec | None:
        """The layer's weight for the fused CPU kernels, or None where they cannot compute it
        (default: None; `apply` is then the only way to run the layer)."""
        return None


class FusedMoEMethodBase(ABC):
    """The weights and the matmuls of a FusedMoE layer's experts (routing stays in the layer).

    Weights are the experts' stacked `gate_up_proj` [E, 2*I, H] (rows [ gate: I | up: I ]) and
    `down_proj` [E, H, I], loaded whole or one expert's "gate" / "up" / "down" matrix at a time
    (the layer's weight_loader shard ids (expert, which)).
    """

    @abstractmethod
    def create_weights(
        self,
        layer: nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        params_dtype: torch.dtype,
    ) -> None:
        """Register `gate_up_proj` and `down_proj`, each with a `weight_loader` attribute."""

    @abstractmethod
    def apply(self, layer: nn.Module, expert: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `expert`'s gated MLP on the tokens routed to it: x [n, H] -> [n, H]."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights into the layout `apply` wants (default: nothing to do)."""


ROUTER_GATES = ("mlp.gate", "mlp.shared_expert_gate", "self_attn.kv_b_proj")
"""Module names of the MoE routers (Mixtral's block_sparse_moe is held as `mlp`) and Qwen2-MoE's
shared-expert gate: small [E, H] / [1, H] matrices whose rounding would move tokens between
experts, left float by the methods that quantize a float checkpoint (as vLLM leaves them).
Also MLA's kv_b_proj (DeepSeek): its weight is absorbed per head into the query and the output
(models/deepseek_v2.py), never applied as a linear, so it must stay a float matrix."""


class QuantizationConfig(ABC):
    """One quantization scheme for a whole model: built once from the checkpoint's
    `quantization_config` (AWQ, GPTQ) or from the method name alone (int8, int4, gguf), it hands
    each linear layer its QuantizeMethodBase and each FusedMoE its FusedMoEMethodBase."""

    name: str = ""

    def __init__(self, modules_to_not_convert: Sequence[str] = ()) -> None:
        self.modules_to_not_convert: tuple[str, ...] = tuple(modules_to_not_convert)
        """Module names (or runs of name components) kept float: see is_layer_skipped."""
        self.packed_modules_mapping: Mapping[str, Sequence[str]] = {}
        """The model's merged module -> checkpoint modules (create_quant_config sets it before
        the model is built): `q_proj` in modules_to_not_convert names our `qkv_proj`."""

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> QuantizationConfig:
        """Build from the transformers config (default: the scheme has no parameters)."""
        return cls()

    def is_skipped(self, prefix: str) -> bool:
        return is_layer_skipped(prefix, self.modules_to_not_convert, self.packed_modules_mapping)

    def linear_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method computing linear `layer` named `prefix`; None leaves it float."""
        return None if self.is_skipped(prefix) else self.get_quant_method(layer, prefix)

    def moe_method(self, layer: nn.Module, prefix: str) -> FusedMoEMethodBase | None:
        """The method computing FusedMoE `layer`'s experts; None leaves them float."""
        return None if self.is_skipped(prefix) else self.get_moe_method(layer, prefix)

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method computing `layer` (not skipped by name), or None to leave it float."""

    def get_moe_method(self, layer: nn.Module, prefix: str) -> FusedMoEMethodBase | None:
        """The method computing a FusedMoE's experts (default None: float experts)."""
        return None


def is_layer_skipped(
    prefix: str,
    ignored: Sequence[str],
    packed_modules_mapping: Mapping[str, Sequence[str]] | None = None,
) -> bool:
    """Whether module `prefix` is named by `ignored` (a checkpoint's modules_to_not_convert).

    An entry names a module when it is a whole run of the prefix's dot-separated components:
    "down_proj", "mlp.down_proj", "layers.0" and "model.layers.0.mlp.down_proj" all name
    `model.layers.0.mlp.down_proj`; "gate" does not name `...mlp.gate_up_proj`. A merged module
    (`qkv_proj`, per packed_modules_mapping) is named through its checkpoint shards (`q_proj`, ...),
    all or none of them, as in vLLM: they are one matmul, so one method.
    """
    if _names(prefix, ignored):
        return True
    parent, _, last = prefix.rpartition(".")
    shards = (packed_modules_mapping or {}).get(last)
    if not shards:
        return False
    skipped = {_names(f"{parent}.{shard}" if parent else shard, ignored) for shard in shards}
    if len(skipped) > 1:
        raise ValueError(
            f"{prefix}: some of its checkpoint modules {list(shards)} are in "
            f"modules_to_not_convert {list(ignored)} and some are not, but they are one matmul"
        )
    return skipped.pop()


def _names(prefix: str, ignored: Sequence[str]) -> bool:
    parts = prefix.split(".")
    for entry in ignored:
        run = entry.split(".")
        if any(parts[i : i + len(run)] == run for i in range(len(parts) - len(run) + 1)):
            return True
    return False
