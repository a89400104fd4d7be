"""Linear layers. The weights and the matmul belong to a quant method (create_weights / apply);
the layer knows its module name (`prefix`), its shape, its tensor-parallel role and how
checkpoint shards map onto its rows.

Roles (vLLM's names), for a weight W [out, in] split over `tp_size` ranks:

    ReplicatedLinear            every rank holds all of W
    ColumnParallelLinear        rank r holds rows    [r*out/tp, (r+1)*out/tp)   (shard dim 0)
    RowParallelLinear           rank r holds columns [r*in/tp,  (r+1)*in/tp)    (shard dim 1);
                                the partial products are summed across ranks (all-reduce)
    MergedColumnParallelLinear  column-parallel, each stacked shard split on its own:
                                rows [ gate: I/tp | up: I/tp ]
    QKVParallelLinear           column-parallel by heads: rows [ q: H/tp*D | k: Hkv/tp*D | v: .. ]

tp_size / tp_rank default to this process's tensor-parallel group (pagedllm/distributed; a
world of 1 when none was formed, where every role computes the plain y = x W^T). Each rank
loads its slice of every checkpoint tensor; a row-parallel layer all-reduces its partial
products (its bias loaded on rank 0 only, so the sum adds it once), and a column-parallel layer
with gather_output all-gathers its slices.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    kv_heads_per_rank,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from pagedllm.distributed.utils import divide
from pagedllm.model_executor.custom_op import compiled_cpu_kernels_apply, float_weight_dtype
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
    return F.linear(x, weight.to(x.dtype), bias)  # (a half weight kept for the kernel: widened)


class UnquantizedLinearMethod(QuantizeMethodBase):
    """Dense weights in the model dtype."""

    supports_tensor_parallel = True
    """Its weight loader takes the rank's slice (LinearBase._rank_slice)."""

    def __init__(self) -> None:
        self.compiled = compiled_cpu_kernels_apply()
        """Built (with its layer) float32 on the CPU, where the compiled kernel computes it."""

    def create_weights(self, layer, input_size, output_sizes, bias, params_dtype):
        # (a half model on the CPU: the weight in its half dtype, the bias in params_dtype)
        float_weight = params_dtype.is_floating_point
        dtype = float_weight_dtype(self.compiled) if float_weight else params_dtype
        weight = torch.empty(sum(output_sizes), input_size, dtype=dtype)  # [out, in]
        layer.register_parameter("weight", nn.Parameter(weight, requires_grad=False))
        set_weight_attrs(layer.weight, weight_loader=layer.weight_loader)
        create_bias(layer, sum(output_sizes), bias, params_dtype)

    def apply(self, layer, x):
        return dense_linear(x, layer.weight, layer.bias, self.compiled)

    def fused_weight_spec(self, layer: nn.Module) -> FusedWeightSpec | None:
        return FusedWeightSpec("dense", {"weight": layer.weight}) if self.compiled else None


ParallelRole = Literal["replicated", "column", "row"]


def resolve_tp(tp_size: int | None, tp_rank: int | None) -> tuple[int, int]:
    """(tp_size, tp_rank) as given, else this process's tensor-parallel group's."""
    if tp_size is None:
        tp_size = get_tensor_model_parallel_world_size()
        tp_rank = get_tensor_model_parallel_rank() if tp_rank is None else tp_rank
    return tp_size, tp_rank or 0


class LinearBase(nn.Module):
    """y = x W^T (+ b), W made of `output_sizes` row blocks (one per checkpoint shard).

    prefix: the module's name in the model (`model.layers.0.mlp.down_proj`), by which a
    quantization config may leave it unquantized. input_size / output_sizes are the whole
    layer's; the `*_per_partition` sizes are this rank's (equal at tp_size 1).
    """

    parallel_role: ClassVar[ParallelRole] = "replicated"
    """Which dim of W the ranks split: "column" the output rows, "row" the input columns."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        quant_method: QuantizeMethodBase | None = None,
        prefix: str = "",
        tp_size: int | None = None,
        tp_rank: int | None = None,
    ) -> None:
        super().__init__()
        tp_size, tp_rank = resolve_tp(tp_size, tp_rank)
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank={tp_rank} is not a rank of tp_size={tp_size}")
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        self.output_size = sum(output_sizes)
        self.prefix = prefix
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.input_size_per_partition = self._input_per_partition()
        self.output_sizes_per_partition = self._outputs_per_partition()
        self.output_size_per_partition = sum(self.output_sizes_per_partition)
        # NOTE: a model built inside quantization_scope(config) gets the config's method.
        self.quant_method = (
            quant_method or scoped_quant_method(self, prefix) or UnquantizedLinearMethod()
        )
        if (tp_size > 1 and self.parallel_role != "replicated"
                and not getattr(self.quant_method, "supports_tensor_parallel", False)):
            raise NotImplementedError(
                f"{type(self.quant_method).__name__} loads whole checkpoint tensors; it does "
                f"not run with tensor_parallel_size={tp_size}")
        # bias: a row-parallel layer's is not split (added once, after the sum over ranks)
        sizes = self.input_size_per_partition, self.output_sizes_per_partition
        self.quant_method.create_weights(self, *sizes, bias, torch.get_default_dtype())

    def _input_per_partition(self) -> int:
        if self.parallel_role != "row":
            return self.input_size
        return divide(self.input_size, self.tp_size)

    def _outputs_per_partition(self) -> list[int]:
        if self.parallel_role != "column":
            return list(self.output_sizes)
        return [divide(size, self.tp_size) for size in self.output_sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return self.quant_method.apply(self, x)

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | str | None = None
    ) -> None:
        """Copy this rank's slice of a whole checkpoint tensor (shard_id None) or of one shard
        into its rows."""
        if shard_id is None:
            loaded = self._rank_slice(loaded, None)
            if self.parallel_role == "row" and loaded.dim() == 1 and self.tp_rank > 0:
                loaded = torch.zeros_like(loaded)  # the bias joins the all-reduce from rank 0
            default_weight_loader(param, loaded)
            return
        index = self._shard_index(shard_id)
        offset = sum(self.output_sizes_per_partition[:index])
        rows = param.data.narrow(0, offset, self.output_sizes_per_partition[index])
        loaded = self._rank_slice(loaded, index)
        if rows.shape != loaded.shape:
            raise ValueError(
                f"shard {shard_id!r} has shape {tuple(loaded.shape)}, expected {tuple(rows.shape)}"
            )
        rows.copy_(loaded)

    def _rank_slice(self, loaded: torch.Tensor, index: int | None) -> torch.Tensor:
        """This rank's part of a checkpoint tensor (weight [out, in] or bias [out]) of shard
        `index` (None: the whole layer); the tensor itself at tp_size 1. Anything with torch's
        `narrow` works for one shard (GGUF blocks: model_loader.gguf.GGUFWeight)."""
        if self.tp_size == 1:
            return loaded
        if self.parallel_role == "column":
            if index is None and len(self.output_sizes) == 1:
                index = 0
            if index is None:  # a whole merged tensor: each shard's slice, restacked
                parts = loaded.split(self.output_sizes)
                return torch.cat([self._rank_slice(part, i) for i, part in enumerate(parts)])
            size = self.output_sizes_per_partition[index]
            return loaded.narrow(0, self._row_start(index, size), size)
        if self.parallel_role == "row" and loaded.dim() == 2:
            size = self.input_size_per_partition
            return loaded.narrow(1, self.tp_rank * size, size)
        return loaded

    def _row_start(self, index: int, size: int) -> int:
        """First row of this rank's slice of shard `index` (QKV overrides: shared KV heads)."""
        return self.tp_rank * size

    def _shard_index(self, shard_id: int | str) -> int:
        assert isinstance(shard_id, int), f"{type(self).__name__} shards are numbered"
        return shard_id

    def extra_repr(self) -> str:
        tp = f", tp={self.tp_rank}/{self.tp_size}" if self.tp_size > 1 else ""
        return (
            f"in={self.input_size}, out={self.output_sizes}, bias={self.bias is not None}, "
            f"role={self.parallel_role}{tp}"
        )


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight (small layers: the MoE router, OPT's projections)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **kwargs) -> None:
        super().__init__(input_size, [output_size], bias, **kwargs)


class ColumnParallelLinear(LinearBase):
    """Output rows split over the ranks. gather_output: all-gather y after the matmul (False
    when a row-parallel layer consumes the split y, as an MLP's down projection does)."""

    parallel_role = "column"

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        gather_output: bool = False,
        **kwargs,
    ) -> None:
        self.gather_output = gather_output
        super().__init__(input_size, [output_size], bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out(/tp)]
        y = self.quant_method.apply(self, x)
        if self.gather_output and self.tp_size > 1:
            y = tensor_model_parallel_all_gather(y, dim=-1)
        return y


class RowParallelLinear(LinearBase):
    """Input columns split over the ranks. input_is_parallel: x arrives already split (the
    output of a column-parallel layer); reduce_results: all-reduce the partial products."""

    parallel_role = "row"

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        input_is_parallel: bool = True,
        reduce_results: bool = True,
        **kwargs,
    ) -> None:
        self.input_is_parallel = input_is_parallel
        self.reduce_results = reduce_results
        super().__init__(input_size, [output_size], bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in(/tp)] -> [T, out]
        if not self.input_is_parallel and self.tp_size > 1:  # this rank's columns of x
            x = x.narrow(-1, self.tp_rank * self.input_size_per_partition,
                         self.input_size_per_partition)
        y = self.quant_method.apply(self, x)
        if self.reduce_results and self.tp_size > 1:
            y = tensor_model_parallel_all_reduce(y)
        return y


class MergedColumnParallelLinear(LinearBase):
    """Several projections of the same input stacked along the output dim (e.g. gate_up), each
    split over the ranks on its own (rank r: [ gate_r | up_r ])."""

    parallel_role = "column"
    gather_output = False


class QKVParallelLinear(LinearBase):
    """q, k and v projections in one matmul; shards are "q"/"k"/"v" or 0/1/2. Split by heads:
    each rank holds num_heads / tp query heads and num_kv_heads / tp KV heads, or one KV head
    shared by tp / num_kv_heads ranks when there are fewer KV heads than ranks."""

    parallel_role = "column"
    gather_output = False

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool = False,
        **kwargs,
    ) -> None:
        tp_size, _ = resolve_tp(kwargs.get("tp_size"), kwargs.get("tp_rank"))
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.num_heads_per_partition = divide(num_heads, tp_size)
        # each KV head serves a whole group of ranks when there are fewer than ranks
        self.num_kv_heads_per_partition = kv_heads_per_rank(num_kv_heads, tp_size)
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, [self.q_size, self.kv_size, self.kv_size], bias, **kwargs)

    def _outputs_per_partition(self) -> list[int]:
        q = self.num_heads_per_partition * self.head_dim
        kv = self.num_kv_heads_per_partition * self.head_dim
        return [q, kv, kv]

    def _row_start(self, index: int, size: int) -> int:
        if index in (1, 2) and self.num_kv_heads < self.tp_size:
            ranks_per_head = self.tp_size // self.num_kv_heads
            return (self.tp_rank // ranks_per_head) * size
        return self.tp_rank * size

    def _shard_index(self, shard_id: int | str) -> int:
        return {"q": 0, "k": 1, "v": 2}[shard_id] if isinstance(shard_id, str) else shard_id
