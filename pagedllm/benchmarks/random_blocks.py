"""Random GGUF quantized blocks of one type, in the file's byte layout, for the kernel
benchmarks and the quantized-weight tests: random bytes reach every bit pattern of the codes and
sub-scales, while the fp16 scale fields get sane values so products stay finite."""

from __future__ import annotations

import numpy as np

FP16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip
"""Byte offsets of each block type's fp16 scale (and min) fields, by GGMLQuantizationType name."""


def random_blocks(
    qtype, rows: int, cols: int, rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.001, 0.02),
) -> np.ndarray:  # fmt: skip
    """uint8 [rows, bytes per row] of `qtype` (a gguf GGMLQuantizationType) blocks holding a
    [rows, cols] matrix: random bytes, then the fp16 fields drawn uniformly from scale_range."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype.name]:
        value = rng.uniform(*scale_range, n).astype(np.float16)
        blocks[:, offset : offset + 2] = value.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)
