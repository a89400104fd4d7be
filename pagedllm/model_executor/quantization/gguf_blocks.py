"""GGUF block formats -> GroupQuant (integer codes + per-group scale and zero), without going
through float. Bit layouts follow ggml-quants.c (as mirrored by gguf-py's quants.py).

Every supported type is affine within a sub-block of g columns:

    type   block  g   code bits  scale          zero (value of code 0)
    Q4_0    32    32  4 (0..15)  d              -8 d
    Q4_1    32    32  4          d              m
    Q5_0    32    32  5 (0..31)  d              -16 d
    Q5_1    32    32  5          d              m
    Q8_0    32    32  8 signed   d              0
    Q4_K   256    32  4          d * sc[j]      -dmin * m[j]     (6-bit sc/m packed in 12 bytes)
    Q5_K   256    32  5          d * sc[j]      -dmin * m[j]
    Q6_K   256    16  6 (0..63)  d * sc[j]      -32 d * sc[j]    (int8 sc)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pagedllm.model_executor.quantization.group_quant import GroupQuant

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray | None, int]
"""(codes [B, block], scales [B, block // g], zeros [B, block // g] | None, g) for B blocks."""


def _f16(raw: np.ndarray) -> np.ndarray:  # [B, 2] uint8 -> [B, 1] float32
    return raw.copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """[B, n*width/2] packed bytes -> [B, n*width] codes: low nibbles of each `width/2`-byte run,
    then its high nibbles (ggml's order)."""
    b = qs.shape[0]
    qs = qs.reshape(b, -1, 1, width // 2) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (qs & np.uint8(0x0F)).reshape(b, -1)


def _high_bits_5(qh: np.ndarray) -> np.ndarray:  # [B, 4] -> [B, 32] bit 4 of each code
    bits = qh.copy().view(np.uint32).reshape(-1, 1) >> np.arange(32, dtype=np.uint32)
    return ((bits & 1).astype(np.uint8)) << np.uint8(4)


def _q4_0(b: np.ndarray) -> Decoded:
    d = _f16(b[:, :2])
    return _nibbles(b[:, 2:], 32), d, -8 * d, 32


def _q4_1(b: np.ndarray) -> Decoded:
    return _nibbles(b[:, 4:], 32), _f16(b[:, :2]), _f16(b[:, 2:4]), 32


def _q5_0(b: np.ndarray) -> Decoded:
    d = _f16(b[:, :2])
    return _nibbles(b[:, 6:], 32) | _high_bits_5(b[:, 2:6]), d, -16 * d, 32


def _q5_1(b: np.ndarray) -> Decoded:
    codes = _nibbles(b[:, 8:], 32) | _high_bits_5(b[:, 4:8])
    return codes, _f16(b[:, :2]), _f16(b[:, 2:4]), 32


def _q8_0(b: np.ndarray) -> Decoded:
    return b[:, 2:].copy().view(np.int8), _f16(b[:, :2]), None, 32


def _k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    s = packed.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b: np.ndarray) -> Decoded:
    sc, mn = _k_scale_min(b[:, 4:16])
    return _nibbles(b[:, 16:], 64), _f16(b[:, :2]) * sc, -_f16(b[:, 2:4]) * mn, 32


def _q5_k(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((qh & 1) << np.uint8(4)).reshape(n, 256)  # bit j of byte i: code 32 j + i
    return _nibbles(b[:, 48:], 64) | high, _f16(b[:, :2]) * sc, -_f16(b[:, 2:4]) * mn, 32


def _q6_k(b: np.ndarray) -> Decoded:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = b[:, 192:208].copy().view(np.int8).astype(np.float32)
    low = _nibbles(ql, 128).reshape(n, 2, 128)  # two halves of 128 codes
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = ((qh.reshape(n, 2, 1, 32) >> shifts) & np.uint8(3)).reshape(n, 2, 128)
    codes = (low | (high << np.uint8(4))).reshape(n, 256)
    d = _f16(b[:, 208:210]) * scales
    return codes, d, -32 * d, 16


def _decoders() -> dict[int, tuple[int, Callable[[np.ndarray], Decoded], bool]]:
    """GGML type -> (values per block, decoder, codes fit 0..15)."""
    from gguf import GGMLQuantizationType as T

    return {
        T.Q4_0: (32, _q4_0, True), T.Q4_1: (32, _q4_1, True),
        T.Q5_0: (32, _q5_0, False), T.Q5_1: (32, _q5_1, False),
        T.Q8_0: (32, _q8_0, False),
        T.Q4_K: (256, _q4_k, True), T.Q5_K: (256, _q5_k, False), T.Q6_K: (256, _q6_k, False),
    }  # fmt: skip


def supported_gguf_types() -> list[str]:
    return [t.name for t in _decoders()]


def decode_gguf_blocks(data: np.ndarray, qtype, shape: tuple[int, int]) -> GroupQuant:
    """data: [rows, bytes_per_row] GGUF blocks of a weight of `shape` [rows, cols]."""
    decoders = _decoders()
    if qtype not in decoders:
        raise ValueError(
            f"GGUF type {getattr(qtype, 'name', qtype)} has no quantized kernel; supported: "
            f"{supported_gguf_types()} (or run with quantization='none' to dequantize)"
        )
    block, decode, unsigned4 = decoders[qtype]
    rows, cols = shape
    blocks = np.ascontiguousarray(data).reshape(rows * cols // block, -1)
    codes, scales, zeros, group = decode(blocks)
    as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return GroupQuant(
        codes=as_torch(codes.astype(np.uint8 if unsigned4 else np.int8)).view(rows, cols),
        scales=as_torch(scales).view(rows, cols // group),
        zeros=None if zeros is None else as_torch(zeros).view(rows, cols // group),
        group_size=group,
        unsigned4=unsigned4,
    )
