"""GGUF K-quant blocks (Q4_K, Q5_K, Q6_K) -> KQuant: the codes with the two-level scales kept as
the file has them (an fp16 per 256 columns times a small integer per 16 or 32), where
gguf_blocks.py multiplies them out into a float32 scale and zero per group.

    W[n, k] = float(d) * sc * code + float(dm) * m          (products in float32)

    type   g   code       sc (int8)   m (int8)       d     dm (fp16)
    Q4_K   32  0..15      6-bit 0..63  6-bit 0..63   d     -dmin
    Q5_K   32  0..31      6-bit        6-bit         d     -dmin
    Q6_K   16  0..63      int8         = sc          d     -32 d

Why: multiplied out, Q4_K's scale and zero cost 64 bits per 32 weights (6 bits a weight in all
instead of the file's 4.5) and Q6_K's, held as int8 codes, 12 bits a weight instead of 6.56.
The kernel (kquant_weight.py, kernels/csrc/quant/kquant.h) forms the same float32 products the
multiplied-out form holds (d * sc and dm * m are single float32 roundings either way; Q6_K's
-32 d is exact in fp16 and -32 (d sc) exact in float32), so its results are bit for bit the
PackedGroupWeight ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.model_executor.quantization.gguf_blocks import _k_scale_min, _nibbles

SUPER_BLOCK = 256
"""Columns per fp16 (d, dm) pair: one GGUF K-quant block."""
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")


@dataclass
class KQuant:
    codes: torch.Tensor  # [N, K] uint8: 0..15 (bits 4), else 0..63
    sub_scales: torch.Tensor  # [N, K // group_size] int8
    sub_mins: torch.Tensor | None  # [N, K // group_size] int8; None: the same as sub_scales
    super_scales: torch.Tensor  # [N, K // 256] float16 (d)
    super_mins: torch.Tensor  # [N, K // 256] float16 (dm: the zero per unit of m)
    group_size: int  # 16 or 32
    bits: int  # 4 (codes 0..15) or 6 (0..63: Q5_K's and Q6_K's)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def mins_or_scales(self) -> torch.Tensor:
        return self.sub_scales if self.sub_mins is None else self.sub_mins

    def group_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) per group in float32, rounded as the kernel rounds them."""
        per = SUPER_BLOCK // self.group_size
        d = self.super_scales.float().repeat_interleave(per, dim=1)
        dm = self.super_mins.float().repeat_interleave(per, dim=1)
        return d * self.sub_scales.float(), dm * self.mins_or_scales().float()

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] (tests' reference)."""
        n, k = self.shape
        s, z = self.group_terms()
        w = self.codes.float().view(n, -1, self.group_size) * s[:, :, None] + z[:, :, None]
        return w.view(n, k)

    def regroup(self, group_size: int) -> KQuant:
        """The same weight with its sub-block integers repeated onto smaller groups."""
        if group_size == self.group_size:
            return self
        f = self.group_size // group_size
        mins = None if self.sub_mins is None else self.sub_mins.repeat_interleave(f, dim=1)
        return KQuant(self.codes, self.sub_scales.repeat_interleave(f, dim=1), mins,
                      self.super_scales, self.super_mins, group_size, self.bits)  # fmt: skip


def _f16(raw: np.ndarray) -> np.ndarray:  # [B, 2] uint8 -> [B] float16
    return raw.copy().view(np.float16).reshape(-1)


def decode_k_blocks(data: np.ndarray, qtype_name: str, shape: tuple[int, int]) -> KQuant | None:
    """data [rows, bytes_per_row] of a Q4_K/Q5_K/Q6_K weight; None where the compact form
    cannot hold it exactly (a Q6_K d whose 32-fold overflows fp16)."""
    rows, cols = shape
    b = np.ascontiguousarray(data).reshape(rows * cols // SUPER_BLOCK, -1)
    n = b.shape[0]
    if qtype_name == "Q6_K":
        ql, qh = b[:, :128], b[:, 128:192]
        low = _nibbles(ql, 128).reshape(n, 2, 128)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        high = ((qh.reshape(n, 2, 1, 32) >> shifts) & np.uint8(3)).reshape(n, 2, 128)
        codes = (low | (high << np.uint8(4))).reshape(n, 256)
        sc, mn = b[:, 192:208].copy().view(np.int8), None
        d = _f16(b[:, 208:210])
        with np.errstate(over="ignore"):
            dm = (d * np.float16(-32)).astype(np.float16)
        if not np.array_equal(dm.astype(np.float32), d.astype(np.float32) * -32):
            return None
        group, bits = 16, 6
    elif qtype_name in ("Q4_K", "Q5_K"):
        sc_f, mn_f = _k_scale_min(b[:, 4:16])
        sc, mn = sc_f.astype(np.int8), mn_f.astype(np.int8)
        d, dm = _f16(b[:, :2]), -_f16(b[:, 2:4])
        if qtype_name == "Q4_K":
            codes, bits = _nibbles(b[:, 16:], 64), 4
        else:
            qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
            codes = _nibbles(b[:, 48:], 64) | ((qh & 1) << np.uint8(4)).reshape(n, 256)
            bits = 6
        group = 32
    else:
        return None
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return KQuant(
        codes=t(codes.astype(np.uint8)).view(rows, cols),
        sub_scales=t(sc).view(rows, cols // group),
        sub_mins=None if mn is None else t(mn).view(rows, cols // group),
        super_scales=t(d).view(rows, cols // SUPER_BLOCK),
        super_mins=t(dm).view(rows, cols // SUPER_BLOCK),
        group_size=group,
        bits=bits,
    )


def concat_k_rows(parts: list[KQuant]) -> KQuant:
    """Shards of a merged layer (q|k|v, gate|up) stacked along the output dim; a Q6_K shard
    beside Q4_K ones brings the layer to groups of 16 and 6-bit codes."""
    if len(parts) == 1:
        return parts[0]
    group = min(p.group_size for p in parts)
    parts = [p.regroup(group) for p in parts]
    mins = None
    if any(p.sub_mins is not None for p in parts):
        mins = torch.cat([p.mins_or_scales() for p in parts])
    return KQuant(
        torch.cat([p.codes for p in parts]), torch.cat([p.sub_scales for p in parts]), mins,
        torch.cat([p.super_scales for p in parts]), torch.cat([p.super_mins for p in parts]),
        group, max(p.bits for p in parts),
    )  # fmt: skip
