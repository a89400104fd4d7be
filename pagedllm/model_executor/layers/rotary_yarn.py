"""YaRN rope scaling (rope_type "yarn": DeepSeek-V2/V3, Qwen long-context configs), as transformers
computes it: each frequency blends its interpolated value (inv_freq / factor) and its original one
by a linear ramp over the dims whose number of rotations within original_max_position_embeddings
lies between beta_slow and beta_fast; cos/sin are multiplied by an attention factor (mscale).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's Eq. 21: 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1)."""
    return 0.1 * mscale * math.log(scale) + 1.0 if scale > 1 else 1.0


def yarn_attention_factor(params: dict[str, Any]) -> float:
    """attention_factor if given; else mscale(factor, mscale) / mscale(factor, mscale_all_dim)
    when both are set (DeepSeek), else mscale(factor)."""
    if params.get("attention_factor") is not None:
        return params["attention_factor"]
    factor, mscale, mscale_all_dim = params["factor"], params.get("mscale"), params.get(
        "mscale_all_dim")  # fmt: skip
    if mscale and mscale_all_dim:
        return yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    return yarn_get_mscale(factor)


def yarn_inv_freq(rotary_dim: int, params: dict[str, Any]) -> torch.Tensor:  # [R/2]
    base, factor = params["rope_theta"], params["factor"]
    original = params["original_max_position_embeddings"]
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    low, high = _correction_range(beta_fast, beta_slow, rotary_dim, base, original,
                                  params.get("truncate", True))  # fmt: skip
    if low == high:
        high += 0.001  # (no singular ramp)
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency (extrapolated), 0: interpolated
    return interpolation * (1 - keep) + extrapolation * keep


def _correction_range(
    low_rot: float, high_rot: float, dim: int, base: float, original: int, truncate: bool
) -> tuple[float, float]:
    """The dims rotating low_rot .. high_rot times within `original` positions."""

    def dim_of(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = dim_of(low_rot), dim_of(high_rot)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)
