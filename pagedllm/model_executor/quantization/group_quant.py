"""GroupQuant: the one decoded form every weight format is brought to before packing.

    W[n, k] = scales[n, k // g] * codes[n, k] + zeros[n, k // g]       (zeros None: 0)

GGUF blocks, AWQ/GPTQ int32 words and float weights quantized at load all decode into it;
`to_kernel` then picks the fastest layout of kernels.py that can hold it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.model_executor.quantization.kernels import (
    GroupedDequantWeight,
    Int4GroupWeight,
    Int8ChannelWeight,
    PackedGroupWeight,
    QuantizedWeight,
    SplitInt4Weight,
    can_pack_int4,
)


@dataclass
class GroupQuant:
    codes: torch.Tensor  # [N, K] integers (int8/uint8/int32 storage)
    scales: torch.Tensor  # [N, K // group_size] float32
    zeros: torch.Tensor | None  # [N, K // group_size] float32; None: symmetric
    group_size: int
    unsigned4: bool = False
    """All codes are in 0..15 (int4-packable)."""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this encodes (tests' reference)."""
        n, k = self.shape
        w = self.codes.float().view(n, -1, self.group_size) * self.scales[:, :, None]
        if self.zeros is not None:
            w = w + self.zeros[:, :, None]
        return w.view(n, k)

    def regroup(self, group_size: int) -> GroupQuant:
        """The same weight with scales repeated onto smaller groups (group_size divides ours)."""
        if group_size == self.group_size:
            return self
        factor = self.group_size // group_size
        assert factor * group_size == self.group_size
        zeros = None if self.zeros is None else self.zeros.repeat_interleave(factor, dim=1)
        return GroupQuant(self.codes, self.scales.repeat_interleave(factor, dim=1), zeros,
                          group_size, self.unsigned4)  # fmt: skip


def concat_rows(parts: list[GroupQuant]) -> GroupQuant:
    """Stack shards of a merged layer (q|k|v, gate|up) along the output dim."""
    if len(parts) == 1:
        return parts[0]
    group = min(p.group_size for p in parts)
    parts = [p.regroup(group) for p in parts]
    if any(p.zeros is not None for p in parts):
        zeros = torch.cat([p.zeros if p.zeros is not None else torch.zeros_like(p.scales)
                           for p in parts])  # fmt: skip
    else:
        zeros = None
    codes = torch.cat([p.codes.to(torch.int16) for p in parts])  # common storage, then narrowed
    codes = codes.to(torch.uint8 if all(p.unsigned4 for p in parts) else torch.int8)
    return GroupQuant(codes, torch.cat([p.scales for p in parts]), zeros, group,
                      all(p.unsigned4 for p in parts))  # fmt: skip


def to_kernel(gq: GroupQuant, input_perm: torch.Tensor | None = None) -> QuantizedWeight:
    """The fastest kernel layout that represents `gq` exactly (see kernels.py)."""
    n, k = gq.shape
    if compiled_kernel_fits(k, gq.group_size, gq.codes.device):
        return to_packed_group_weight(gq, input_perm)
    if gq.unsigned4 and can_pack_int4(n, k, gq.group_size):
        zeros = gq.zeros if gq.zeros is not None else torch.zeros_like(gq.scales)
        # tinygemm stores the value of code 8: scale * 8 + zero.
        return Int4GroupWeight(gq.codes, gq.scales, zeros + 8 * gq.scales, gq.group_size,
                               input_perm)  # fmt: skip
    if gq.group_size == k and gq.zeros is None and not gq.unsigned4:
        return Int8ChannelWeight(gq.codes, gq.scales[:, 0], input_perm)
    if can_pack_int4(n, k, gq.group_size):  # codes fit int8 (they are stored so)
        zeros = gq.zeros if gq.zeros is not None else torch.zeros_like(gq.scales)
        return SplitInt4Weight(gq.codes, gq.scales, zeros, gq.group_size, input_perm)
    if gq.unsigned4:  # 0..15 in int8 storage, centred so the int8 codes stay small
        zeros = gq.zeros if gq.zeros is not None else torch.zeros_like(gq.scales)
        gq = GroupQuant(gq.codes.to(torch.int8) - 8, gq.scales, zeros + 8 * gq.scales,
                        gq.group_size)  # fmt: skip
    return GroupedDequantWeight(gq.codes, gq.scales, gq.zeros, gq.group_size, input_perm)


def compiled_kernel_fits(in_features: int, group_size: int, device: torch.device) -> bool:
    """PackedGroupWeight can hold a weight of these columns and groups on `device` (groups of
    16, or any multiple of 32, which to_packed_group_weight splits into 32s)."""
    from pagedllm.kernels import cpu_kernels_available

    groups_fit = group_size == 16 or group_size % 32 == 0
    return device.type == "cpu" and in_features % 32 == 0 and groups_fit and (
        cpu_kernels_available()
    )


def to_packed_group_weight(gq: GroupQuant, input_perm=None) -> PackedGroupWeight:
    """gq in the compiled kernel's layout: groups of 16 or 32 (larger groups repeat their
    scales), 4-bit codes packed, wider codes centred into int8 (the kernel's error is smallest
    for centred codes; the zero absorbs the shift exactly)."""
    group = gq.group_size if gq.group_size in (16, 32) else 32
    gq = gq.regroup(group)
    if gq.unsigned4:
        return PackedGroupWeight.from_codes(gq.codes, gq.scales, gq.zeros, group, True, input_perm)
    codes = gq.codes.to(torch.int16)
    offset = (int(codes.min()) + int(codes.max()) + 1) // 2
    zeros = gq.zeros
    if offset:
        codes = codes - offset
        zeros = (zeros if zeros is not None else torch.zeros_like(gq.scales)) + offset * gq.scales
    return PackedGroupWeight.from_codes(codes.to(torch.int8), gq.scales, zeros, group, False,
                                        input_perm)  # fmt: skip


def quantize_int8_grouped(w: torch.Tensor, group_size: int = 32) -> GroupQuant:
    """Symmetric int8 with one scale per group of columns (embeddings / LM heads)."""
    n, k = w.shape
    groups = w.float().reshape(n, k // group_size, group_size)
    scales = (groups.abs().amax(dim=-1) / 127).clamp_min(1e-12)
    codes = torch.round(groups / scales[..., None]).clamp_(-127, 127).to(torch.int8)
    return GroupQuant(codes.view(n, k), scales, None, group_size)


def quantize_int8_per_channel(w: torch.Tensor) -> GroupQuant:
    """Symmetric int8, one scale per output row. Scales are rounded to bf16 first (the kernel's
    scale dtype), so the kernel computes exactly the weight this returns."""
    w = w.float()
    scales = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
    scales = scales.to(torch.bfloat16).float()
    codes = torch.round(w / scales).clamp_(-127, 127).to(torch.int8)
    return GroupQuant(codes, scales, None, w.shape[1])


def quantize_int4_grouped(w: torch.Tensor, group_size: int) -> GroupQuant:
    """Asymmetric 4-bit (codes 0..15) with a bf16-exact scale and minimum per column group."""
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide in_features={k}")
    groups = w.float().reshape(n, k // group_size, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp_min(1e-12).to(torch.bfloat16).float()
    # zero = value of code 0; kept so that zero + 8 * scale (what the kernel stores) is exact
    mid = (lo + 8 * scales).to(torch.bfloat16).float()
    zeros = mid - 8 * scales
    codes = torch.round((groups - zeros[..., None]) / scales[..., None]).clamp_(0, 15)
    return GroupQuant(codes.to(torch.uint8).view(n, k), scales, zeros, group_size, True)
