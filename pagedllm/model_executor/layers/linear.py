"""Linear layers. The weights and the matmul belong to a quant method (create_weights / apply);
the layer only knows its shape and how checkpoint shards map onto its rows.

No tensor parallelism: "merged" layers stack several checkpoint matrices along the output dim.

    QKVLinear.weight rows:  [ q: H*D | k: Hkv*D | v: Hkv*D ]
    MergedColumnLinear (gate_up):  [ gate: I | up: I ]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.custom_op import compiled_cpu_kernels_apply
from pagedllm.model_executor.layers.weight_utils import (
    create_bias,
    default_weight_loader,
    set_weight_attrs,
)
from pagedllm.model_executor.quantization.base import FusedWeightSpec, QuantizeMethodBase
from pagedllm.model_executor.quantization.scope import scoped_quant_method


def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, compiled: bool
) -> torch.Tensor:
    """x W^T + b. compiled (the caller's choice at construction, custom_op.py): through the
    compiled float32 CPU kernel (a streaming GEMV for few rows, where ATen's GEMM is slow; the
    fused decoder stack calls the same), else F.linear."""
    # NOTE: the kernel takes rows ([T, in]); other shapes take F.linear
    if compiled and x.dim() == 2:
        return torch.ops.pagedllm.dense_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class UnquantizedLinearMethod(QuantizeMethodBase):
    """Dense weights in the model dtype."""

    def __init__(self) -> None:
        self.compiled = compiled_cpu_kernels_apply()
        """Built (with its layer) float32 on the CPU, where the compiled kernel computes it."""

    def create_weights(self, layer, input_size, output_sizes, bias, params_dtype):
        weight = torch.empty(sum(output_sizes), input_size, dtype=params_dtype)  # [out, in]
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))
        set_weight_attrs(layer.weight, weight_loader=layer.weight_loader)
        create_bias(layer, sum(output_sizes), bias, params_dtype)

    def apply(self, layer, x):
        return dense_linear(x, layer.weight, layer.bias, self.compiled)

    def fused_weight_spec(self, layer: nn.Module) -> FusedWeightSpec | None:
        return FusedWeightSpec("dense", {"weight": layer.weight}) if self.compiled else None


class LinearBase(nn.Module):
    """y = x W^T (+ b), W made of `output_sizes` row blocks (one per checkpoint shard)."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        quant_method: QuantizeMethodBase | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        self.output_size = sum(output_sizes)
        self.prefix = prefix
        # NOTE: a model built inside quantization_scope(config) gets the config's method.
        self.quant_method = (
            quant_method or scoped_quant_method(self, prefix) or UnquantizedLinearMethod()
        )
        self.quant_method.create_weights(
            self, input_size, self.output_sizes, bias, torch.get_default_dtype()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return self.quant_method.apply(self, x)

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str | None = None
    ) -> None:
        """Copy a whole checkpoint tensor (shard_id None) or one shard into its rows."""
        if shard_id is None:
            default_weight_loader(param, loaded)
            return
        index = self._shard_index(shard_id)
        offset = sum(self.output_sizes[:index])
        rows = param.data.narrow(0, offset, self.output_sizes[index])
        if rows.shape != loaded.shape:
            raise ValueError(
                f"shard {shard_id!r} has shape {tuple(loaded.shape)}, expected {tuple(rows.shape)}"
            )
        rows.copy_(loaded)

    def _shard_index(self, shard_id: int | str) -> int:
        assert isinstance(shard_id, int), f"{type(self).__name__} shards are numbered"
        return shard_id

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_sizes}, bias={self.bias is not None}"


class ReplicatedLinear(LinearBase):
    """A plain linear layer (also stands for Column/RowParallel: there is no tensor parallelism)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **kwargs) -> None:
        super().__init__(input_size, [output_size], bias, **kwargs)


class MergedColumnLinear(LinearBase):
    """Several projections of the same input stacked along the output dim (e.g. gate_up)."""


class QKVLinear(LinearBase):
    """q, k and v projections in one matmul; shards are "q"/"k"/"v" or 0/1/2."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        **kwargs,
    ) -> None:
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, [self.q_size, self.kv_size, self.kv_size], bias, **kwargs)

    def _shard_index(self, shard_id: int | str) -> int:
        return {"q": 0, "k": 1, "v": 2}[shard_id] if isinstance(shard_id, str) else shard_id
