"""Gated activations: [T, 2*I] (gate | up) -> act(gate) * up: [T, I]; and the plain ones of
non-gated MLPs (GPT-2, GPT-NeoX, OPT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.model_executor.custom_op import CustomOp


class SiluAndMul(CustomOp):
    """SwiGLU: silu(gate) * up."""

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2*I] -> [T, I]
        # NOTE: the kernel takes rows; a caller with other shapes (a batch of experts' inputs,
        # [E, T, 2*I]) gets the reference
        if x.dim() != 2:
            return self.forward_native(x)
        return torch.ops.pagedllm.silu_and_mul(x)  # one pass, as in the fused decoder stack

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluAndMul(CustomOp):
    """GeGLU: gelu(gate) * up; approximate="tanh" is HF's "gelu_pytorch_tanh" (the compiled
    kernel computes that one; the exact erf form runs the reference)."""

    def __init__(self, approximate: str = "none") -> None:
        self.approximate = approximate
        super().__init__()

    def dispatch_forward(self):
        if self.approximate != "tanh":
            return self.forward_native
        return super().dispatch_forward()

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:  # [T, 2*I] -> [T, I]
        if x.dim() != 2:
            return self.forward_native(x)
        return torch.ops.pagedllm.gelu_tanh_and_mul(x)  # one pass, as in the fused decoder stack

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
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


_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),  # HF NewGELUActivation
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_fast": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


def get_act_fn(hidden_act: str) -> nn.Module:
    """The (non-gated) activation of an HF `hidden_act` / `activation_function` name."""
    if hidden_act not in _ACTIVATIONS:
        raise ValueError(
            f"activation {hidden_act!r} is not supported; supported: {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[hidden_act]()
