"""Q5Weight: a GGUF Q5_0 / Q5_1 weight in the compiled kernel's row-interleaved layout with the
file's fp16 scales and 5-bit codes (kernels/csrc/quant/q5.h):

    codes    5 bits: a nibble plane and a 1-bit plane over PackedGroupWeight's i8 layout
    scales   float16 d per 16 rows x 32 columns
    mins     Q5_1: float16 m likewise; Q5_0: empty (its zero is -16 d)

Bits per weight against PackedGroupWeight's 8-bit codes with a float16 (or float32) scale and
min per group: Q5_0 5.5 (was 9), Q5_1 6 (was 9, or 10 where a centred min needs float32). The
kernel forms PackedGroupWeight's scale and min in registers and unpacks the codes in the tile
loop, so the results are that path's bits exactly (same tokens, batch-invariant as it is).
Gemma 3 270M's Q4_K_M file keeps q/k/v and gate/up in Q5_0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.model_executor.quantization.base import FusedWeightSpec
from pagedllm.model_executor.quantization.compact_weight import CompactGroupWeight
from pagedllm.model_executor.quantization.gguf_blocks import _high_bits_5, _nibbles
from pagedllm.model_executor.quantization.kernels import ROW_GROUP, interleave_rows

Q5_TYPES = ("Q5_0", "Q5_1")
GROUP = 32


@dataclass
class Q5Blocks:
    codes: torch.Tensor  # [N, K] uint8 0..31
    d: torch.Tensor  # [N, K // 32] float16
    m: torch.Tensor | None  # [N, K // 32] float16 (Q5_1); None: Q5_0 (zero -16 d)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))


def decode_q5_blocks(data: np.ndarray, qtype_name: str, shape: tuple[int, int]) -> Q5Blocks:
    """data [rows, bytes_per_row] of a Q5_0 / Q5_1 weight (gguf_blocks.py's bit layout)."""
    rows, cols = shape
    b = np.ascontiguousarray(data).reshape(rows * cols // GROUP, -1)
    at = 4 if qtype_name == "Q5_1" else 2  # the high-bit word follows d (and m)
    codes = _nibbles(b[:, at + 4:], 32) | _high_bits_5(b[:, at:at + 4])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    half = lambda raw: t(raw.copy().view(np.float16).reshape(rows, cols // GROUP))  # noqa: E731
    m = half(b[:, 2:4]) if qtype_name == "Q5_1" else None
    return Q5Blocks(t(codes).view(rows, cols), half(b[:, :2]), m)


def concat_q5_rows(parts: list[Q5Blocks]) -> Q5Blocks | None:
    """Shards of a merged layer stacked along the output dim; None where Q5_0 and Q5_1 mix."""
    if len({p.m is None for p in parts}) != 1:
        return None
    m = None if parts[0].m is None else torch.cat([p.m for p in parts])
    return Q5Blocks(torch.cat([p.codes for p in parts]), torch.cat([p.d for p in parts]), m)


def q5_kernel_fits(shape: tuple[int, int], device: torch.device) -> bool:
    from pagedllm.kernels import cpu_kernels_available

    n, k = shape
    return (device.type == "cpu" and n % ROW_GROUP == 0 and k % GROUP == 0
            and cpu_kernels_available())  # fmt: skip


def pack_5bit(stream: torch.Tensor) -> torch.Tensor:
    """[..., L] uint8 codes 0..31 (L % 128 == 0) -> [..., 5 L / 8] (the layout of q5.h)."""
    lead, length = stream.shape[:-1], stream.shape[-1]
    q = stream.reshape(-1, length // 128, 2, 64)
    lo = (q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)
    bits = (q >> 4).to(torch.int64) << torch.arange(64, dtype=torch.int64)
    words = bits.sum(-1)  # [.., 2] 64-bit words (bit 63 wraps to the sign: same bytes)
    hi = words.contiguous().view(torch.uint8).reshape(-1, length // 128, 16)  # little-endian
    return torch.cat((lo, hi), dim=-1).reshape(*lead, length // 8 * 5)


class Q5Weight(CompactGroupWeight):
    """y = x W^T for a Q5Blocks W (see the module notes); rows a multiple of 16."""

    op = "q5"

    def __init__(self, q5: Q5Blocks, input_perm=None) -> None:
        n, k = q5.shape
        super().__init__(n, k, input_perm)
        assert n % ROW_GROUP == 0 and k % GROUP == 0, q5.shape
        self.group_size = GROUP
        self.q5_1 = q5.m is not None
        # centred as group_quant.to_packed_group_weight centres int8 codes (its offset)
        self.offset = (int(q5.codes.min()) + int(q5.codes.max()) + 1) // 2
        mins = q5.m if q5.m is not None else q5.d
        codes, scales, mins = interleave_rows(q5.codes, q5.d, mins, GROUP, False)
        self.register_buffer("codes", pack_5bit(codes.reshape(n // ROW_GROUP, -1)).contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("mins", mins.contiguous() if self.q5_1
                             else torch.empty(0, dtype=torch.float16))  # fmt: skip

    def _args(self) -> tuple:
        return (self.codes, self.scales, self.mins, self.offset)

    def fused_weight_spec(self) -> FusedWeightSpec | None:
        if self.input_perm is not None:
            return None
        tensors = {"codes": self.codes, "scales": self.scales, "mins": self.mins}
        return FusedWeightSpec("q5", tensors, GROUP, False, self.activation_bits, self.offset)

    def extra_repr(self) -> str:
        kind = "Q5_1" if self.q5_1 else "Q5_0"
        return f"{super().extra_repr()}, {kind}, offset={self.offset}"


def compact_q5_weight(parts) -> Q5Weight | None:
    """GGUF shards all Q5_0 or all Q5_1 as a Q5Weight, or None where that kernel does not take
    them (then PackedGroupWeight's form)."""
    from pagedllm import envs

    if not envs.compact_q5() or any(p.qtype.name not in Q5_TYPES for p in parts):
        return None
    q5 = concat_q5_rows([decode_q5_blocks(p.data, p.qtype.name, p.shape) for p in parts])
    if q5 is None or not q5_kernel_fits(q5.shape, q5.codes.device):
        return None
    return Q5Weight(q5)


def log_q5_form(model: torch.nn.Module) -> None:
    """The start-up line saying how a loaded model holds its GGUF Q5_0/Q5_1 weights (none
    without Q5Weights, unless PAGEDLLM_COMPACT_Q5=0 turned them off)."""
    from pagedllm import envs
    from pagedllm.logger import init_logger

    compact = [m for m in model.modules() if isinstance(m, Q5Weight)]
    if compact:
        weights = sum(m.out_features * m.in_features for m in compact)
        nbytes = sum(m.weight_bytes() for m in compact)
        init_logger(__name__).info(
            "GGUF Q5_0/Q5_1 weights: %d matrices keep the file's fp16 scales and 5-bit codes "
            "(%.0f MiB, %.2f bits a weight; PAGEDLLM_COMPACT_Q5=0, or PAGEDLLM_COMPACT_KQUANT=0, "
            "multiplies them out)", len(compact), nbytes / 2**20, 8 * nbytes / weights)
    elif not envs.compact_q5():
        init_logger(__name__).info(
            "PAGEDLLM_COMPACT_Q5=0: GGUF Q5_0/Q5_1 weights (if any) are held multiplied out "
            "(8-bit codes, a scale and min per group)")
