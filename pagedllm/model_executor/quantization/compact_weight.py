"""The shared shell of the GGUF weights kept in their file's compact form (K-quants:
kquant_weight.py, Q5_0/Q5_1: q5_weight.py): each runs the row-interleaved quantized GEMM
through its own compiled op pair, and differs only in the buffers it passes."""

from __future__ import annotations

import torch

from pagedllm.model_executor.quantization.kernels import QuantizedWeight


class CompactGroupWeight(QuantizedWeight):
    """A row-interleaved GGUF weight kept in its file's compact form, run by a compiled op pair:
    `<op>_linear(x, *_args(), activation_bits)` and `<op>_gather_rows(ids, *_args(), K)`
    (KQuantWeight: kquant.h; Q5Weight: q5.h). Rows a multiple of 16."""

    op: str
    """the ops' stem in torch.ops.pagedllm"""
    activation_bits: int = 16
    """16 or 8, as PackedGroupWeight's (set after loading by activation_dtype.py)."""

    def _args(self) -> tuple:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        linear = getattr(torch.ops.pagedllm, f"{self.op}_linear")
        y = linear(flat, *self._args(), self.activation_bits)
        return y.reshape(*x.shape[:-1], self.out_features)

    def gather_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W in float32 (embedding lookups)."""
        gather = getattr(torch.ops.pagedllm, f"{self.op}_gather_rows")
        rows = gather(ids.reshape(-1), *self._args(), self.in_features)
        return rows.reshape(*ids.shape, self.in_features)

    def dequantize_stored(self) -> torch.Tensor:
        return self.gather_rows(torch.arange(self.out_features, device=self.codes.device))

    @property
    def row_interleaved(self) -> bool:
        return True  # (activation_dtype.py: int8 activations apply)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())
