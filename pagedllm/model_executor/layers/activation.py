"""Gated activations: [T, 2*I] (gate | up) -> act(gate) * up: [T, I]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """SwiGLU: silu(gate) * up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluAndMul(nn.Module):
    """GeGLU: gelu(gate) * up; approximate="tanh" is HF's "gelu_pytorch_tanh"."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def get_act_and_mul(hidden_act: str) -> nn.Module:
    """The gated activation of an HF `hidden_act` / `hidden_activation` name."""
    if hidden_act == "silu":
        return SiluAndMul()
    if hidden_act == "gelu_pytorch_tanh":
        return GeluAndMul("tanh")
    if hidden_act == "gelu":
        return GeluAndMul("none")
    raise ValueError(
        f"hidden_act {hidden_act!r} is not supported; supported: silu, gelu, gelu_pytorch_tanh"
    )
