"""KQuantWeight: a GGUF K-quant weight (Q4_K, Q5_K, Q6_K) in the compiled kernel's
row-interleaved layout with the file's compact scales (kernels/csrc/quant/kquant.h):

    codes         Q4_K: 4 bits (PackedGroupWeight's u4 layout); Q5_K / Q6_K / mixed: 6 bits
                  (a nibble plane and a 2-bit plane over PackedGroupWeight's i8 layout)
    sub_scales    int8 per 16 rows x group (16 or 32 columns)        sub_mins likewise (Q4/5_K)
    super_scales  float16 per 16 rows x 256 columns                  super_mins likewise

Bits per weight against PackedGroupWeight's float scale and min per group and 8-bit codes:
Q4_K 4.625 (was 6), Q5_K 6.625 (was 10), Q6_K 6.625 (was 12), a Q4_K/Q6_K merged layer 7.125
(was 12). The kernel decodes a block of row groups into PackedGroupWeight's values and runs its
loop, so the results are that path's bits exactly (same tokens, batch-invariant as it is).
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm import envs
from pagedllm.logger import init_logger
from pagedllm.model_executor.quantization.base import FusedWeightSpec
from pagedllm.model_executor.quantization.compact_weight import CompactGroupWeight
from pagedllm.model_executor.quantization.gguf_kquant import SUPER_BLOCK, KQuant
from pagedllm.model_executor.quantization.kernels import (
    ROW_GROUP,
    QuantizedWeight,
    interleave_rows,
)

logger = init_logger(__name__)


def kquant_kernel_fits(kq: KQuant, device: torch.device) -> bool:
    """The compiled K-quant kernel holds `kq` (rows in whole row groups, on a CPU with the
    kernels built)."""
    from pagedllm.kernels import cpu_kernels_available

    n, k = kq.shape
    return (device.type == "cpu" and n % ROW_GROUP == 0 and k % SUPER_BLOCK == 0
            and cpu_kernels_available())  # fmt: skip


def pack_6bit(stream: torch.Tensor) -> torch.Tensor:
    """[..., L] uint8 codes 0..63 (L % 128 == 0) -> [..., 3 L / 4] (the layout of kquant.h)."""
    lead, length = stream.shape[:-1], stream.shape[-1]
    q = stream.reshape(-1, length // 128, 4, 32)
    q0, q1, q2, q3 = q.unbind(2)
    lo = torch.cat(((q0 & 15) | ((q2 & 15) << 4), (q1 & 15) | ((q3 & 15) << 4)), dim=-1)
    hi = (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6)
    return torch.cat((lo, hi), dim=-1).reshape(*lead, length // 4 * 3)


class KQuantWeight(CompactGroupWeight):
    """y = x W^T for a KQuant W (see the module notes); rows a multiple of 16."""

    op = "kquant"

    def __init__(self, kq: KQuant, input_perm=None) -> None:
        n, k = kq.shape
        super().__init__(n, k, input_perm)
        assert n % ROW_GROUP == 0 and k % SUPER_BLOCK == 0, kq.shape
        self.group_size = g = kq.group_size
        self.u4 = kq.bits == 4
        if self.u4:
            self.offset = 0
            c = kq.codes.view(n, k // 32, 2, 16)
            codes = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(n, k // 2)
        else:
            # centred as group_quant.to_packed_group_weight centres wider codes (its offset)
            self.offset = (int(kq.codes.min()) + int(kq.codes.max()) + 1) // 2
            codes = kq.codes
        sub_scales, sub_mins = kq.sub_scales, kq.mins_or_scales()
        codes, sub_scales, sub_mins = interleave_rows(codes, sub_scales, sub_mins, g, self.u4)
        if not self.u4:
            codes = pack_6bit(codes.reshape(n // ROW_GROUP, -1))
        else:
            codes = codes.reshape(n // ROW_GROUP, -1)

        def by_row_group(t: torch.Tensor) -> torch.Tensor:
            return t.view(n // ROW_GROUP, ROW_GROUP, -1).transpose(1, 2).contiguous()

        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("sub_scales", sub_scales.contiguous())
        no_mins = torch.empty(0, dtype=torch.int8)  # Q6_K: the sub-scales serve (kquant.h)
        self.register_buffer("sub_mins", sub_mins.contiguous() if kq.sub_mins is not None
                             else no_mins)  # fmt: skip
        self.register_buffer("super_scales", by_row_group(kq.super_scales))
        self.register_buffer("super_mins", by_row_group(kq.super_mins))

    def _args(self) -> tuple:
        return (self.codes, self.sub_scales, self.sub_mins, self.super_scales, self.super_mins,
                self.group_size, self.u4, self.offset)  # fmt: skip

    def fused_weight_spec(self) -> FusedWeightSpec | None:
        if self.input_perm is not None:
            return None
        tensors = {name: getattr(self, name) for name in
                   ("codes", "sub_scales", "sub_mins", "super_scales", "super_mins")}  # fmt: skip
        return FusedWeightSpec("kquant", tensors, self.group_size, self.u4, self.activation_bits,
                               self.offset)  # fmt: skip

    def extra_repr(self) -> str:
        kind = "u4" if self.u4 else f"6-bit, offset={self.offset}"
        return f"{super().extra_repr()}, {kind}, group={self.group_size}"


def to_kquant_weight(kq: KQuant, input_perm=None) -> QuantizedWeight:
    """The compact kernel where it fits, else PackedGroupWeight's (or the PyTorch fallbacks')
    form of the same weight through group_quant.to_kernel."""
    if kquant_kernel_fits(kq, kq.codes.device):
        return KQuantWeight(kq, input_perm)
    from pagedllm.model_executor.quantization.group_quant import to_kernel

    return to_kernel(as_group_quant(kq), input_perm)


def as_group_quant(kq: KQuant):
    """The multiplied-out GroupQuant (gguf_blocks.py's form) of `kq`."""
    from pagedllm.model_executor.quantization.group_quant import GroupQuant

    s, z = kq.group_terms()
    codes = kq.codes if kq.bits == 4 else kq.codes.to(torch.int8)
    return GroupQuant(codes, s, z, kq.group_size, unsigned4=kq.bits == 4)


def log_kquant_form(model: nn.Module) -> None:
    """The start-up line saying how a loaded model holds its GGUF K-quant weights (none without
    KQuantWeights, unless PAGEDLLM_COMPACT_KQUANT=0 turned them off)."""
    compact = [m for m in model.modules() if isinstance(m, KQuantWeight)]
    if compact:
        weights = sum(m.out_features * m.in_features for m in compact)
        nbytes = sum(m.weight_bytes() for m in compact)
        logger.info("GGUF K-quant weights: %d matrices keep the file's compact scales (%.0f MiB, "
                    "%.2f bits a weight; PAGEDLLM_COMPACT_KQUANT=0 multiplies them out)",
                    len(compact), nbytes / 2**20, 8 * nbytes / weights)  # fmt: skip
    elif not envs.compact_kquant():
        logger.info("PAGEDLLM_COMPACT_KQUANT=0: GGUF K-quant weights (if any) are held multiplied "
                    "out (a float scale and min per group, 8-bit codes for Q5_K/Q6_K)")
    from pagedllm.model_executor.quantization.q5_weight import log_q5_form

    log_q5_form(model)  # (Q5_0/Q5_1: PAGEDLLM_COMPACT_Q5, defaulting to this switch)
