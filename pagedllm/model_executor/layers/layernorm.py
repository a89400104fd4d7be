"""RMSNorm with the residual add fused in (as vLLM/nano-vllm's decoder layers use it)."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.model_executor.layers.weight_utils import default_weight_loader, set_weight_attrs


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        set_weight_attrs(self.weight, weight_loader=default_weight_loader)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, hidden]. Returns (norm(x + residual), x + residual); with no residual,
        (norm(x), x), so the caller's residual stream starts at x."""
        if residual is not None:
            x = x + residual
        residual = x
        # NOTE: statistics in float32, the scale applied after casting back (as HF Llama does).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype), residual

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
