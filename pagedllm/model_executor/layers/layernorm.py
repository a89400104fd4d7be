"""RMSNorm with the residual add fused in (as vLLM/nano-vllm's decoder layers use it),
Gemma's variant that scales by (1 + w), LayerNorm (with bias, or without: Cohere) behind the same
interface, and a per-head LayerNorm of q or k (StableLM, Cohere)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.custom_op import CustomOp
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs


class RMSNorm(CustomOp):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        set_weight_attrs(self.weight, weight_loader=default_weight_loader)

    @classmethod
    def kernel_computes_norm(cls) -> bool:
        """In float32, `norm(x)` is `weight * (x / rms(x))`: the compiled rows kernel's arithmetic
        (the eager forward_cpu and the fused decoder stack's norms). A subclass that changes
        `norm` computes something else unless it says otherwise."""
        return cls.norm is RMSNorm.norm

    def dispatch_forward(self):
        if not self.kernel_computes_norm():
            return self.forward_native
        return super().dispatch_forward()

    def forward_cpu(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # one pass, the same kernel as the fused decoder stack's norms
        return torch.ops.pagedllm.rms_norm_residual(x, residual, self.weight, self.eps)

    def forward_native(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, hidden]. Returns (norm(x + residual), x + residual); with no residual,
        (norm(x), x), so the caller's residual stream starts at x."""
        if residual is not None:
            x = x + residual
        return self.norm(x), x

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize over the last dim only ([..., hidden]; also per head: [T, heads, head_dim])."""
        # NOTE: statistics in float32, the scale applied after casting back (as HF Llama does).
        return self.weight * self._normalized(x).to(x.dtype)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:  # float32
        h = x.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the checkpoint stores w and the scale is (1 + w), applied in float32
    before casting back (HF GemmaRMSNorm).

    NOTE: `weight` holds the scale itself, 1 + w in float32 whatever the model dtype (the
    weight loader adds the 1, as HF computes it: (1.0 + w.float())), so in float32 this is
    RMSNorm's arithmetic and runs the same compiled kernel, eager and fused alike.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__(hidden_size, eps)
        self.weight = nn.Parameter(torch.empty(hidden_size, dtype=torch.float32),
                                   requires_grad=False)  # fmt: skip
        set_weight_attrs(self.weight, weight_loader=_load_one_plus)

    @classmethod
    def kernel_computes_norm(cls) -> bool:
        # (x / rms(x)) * (1 + w) in float32: the kernel's product, the factors swapped
        return cls.norm is GemmaRMSNorm.norm

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return (self._normalized(x) * self.weight).to(x.dtype)


def _load_one_plus(param: nn.Parameter, loaded: torch.Tensor) -> None:
    default_weight_loader(param, 1.0 + loaded.float())


class LayerNorm(RMSNorm):
    """LayerNorm with weight and bias (GPT-2, GPT-NeoX, OPT), same fused-residual interface."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(hidden_size, eps)
        self.bias = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        set_weight_attrs(self.bias, weight_loader=default_weight_loader)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class LayerNormNoBias(RMSNorm):
    """LayerNorm with a weight and no bias (Cohere), same fused-residual interface."""

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)


class PerHeadLayerNorm(nn.Module):
    """A LayerNorm without bias per head, each head its own weight ([heads, head_dim]), over
    x [T, heads * head_dim]. The checkpoint holds the weight whole (Cohere) or one row per head
    (StableLM's `norms.{h}.weight`: shard_id h). Under tensor parallelism a rank holds the
    rows of its own heads (those of its q or k columns, distributed.utils.head_range)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        from pagedllm.distributed import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )
        from pagedllm.distributed.utils import head_range

        self.eps = eps
        self.num_heads = num_heads
        """The checkpoint's heads (this rank holds `heads` of them)."""
        self.heads = head_range(num_heads, get_tensor_model_parallel_world_size(),
                                get_tensor_model_parallel_rank())
        """[start, end) of the checkpoint's heads this rank holds (all at tp 1)."""
        rows = self.heads[1] - self.heads[0]
        self.weight = nn.Parameter(torch.empty(rows, head_dim), requires_grad=False)
        set_weight_attrs(self.weight, weight_loader=self._load_head_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.view(x.shape[0], *self.weight.shape)  # [T, heads, D]
        normed = F.layer_norm(heads, heads.shape[-1:], eps=self.eps) * self.weight
        return normed.reshape(x.shape)

    def _load_head_rows(self, param: nn.Parameter, loaded: torch.Tensor,
                        head: int | None = None) -> None:
        start, end = self.heads
        if head is None:
            whole = loaded.reshape(-1, param.shape[1])
            default_weight_loader(param, whole[start:end])
        elif start <= head < end:
            default_weight_loader(param[head - start], loaded)
