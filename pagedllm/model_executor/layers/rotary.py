"""Rotary position embedding, neox / HF "rotate-half" layout, with a precomputed cos/sin cache.

For each head, dims [0, D/2) pair with [D/2, D):
    out[:D/2] = x1 * cos - x2 * sin,   out[D/2:] = x2 * cos + x1 * sin
Frequency variants (rope_type): "default", "linear" (positions / factor) and "llama3"
(long wavelengths slowed by `factor`, a smooth ramp between low_freq and high_freq).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(hf_config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """{"rope_type", "rope_theta", ...} from transformers 5's `rope_parameters` or from the
    legacy `rope_theta` + `rope_scaling` attributes.

    layer_type: for configs with one set per layer type (Gemma 3: {"sliding_attention": {...},
    "full_attention": {...}}), the set of that type.
    """
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    if not params:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", None) or 10000.0)
    params["rope_type"] = params.get("rope_type") or params.pop("type", None) or "default"
    return params


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, params: dict[str, Any]) -> None:
        super().__init__()
        if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_type {params['rope_type']!r} is not supported; "
                f"supported: {SUPPORTED_ROPE_TYPES}"
            )
        self.head_dim = head_dim
        self.max_position = max_position
        inv_freq = _inv_freq(head_dim, params)  # [D/2]
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_position, D/2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)  # [max_position, D]
        # NOTE: float32 whatever the model dtype, cast at use (HF computes cos/sin in fp32).
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self,
        positions: torch.Tensor,  # [T] long
        query: torch.Tensor,  # [T, H * D]
        key: torch.Tensor,  # [T, Hkv * D]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin_cache[positions].to(query.dtype).chunk(2, dim=-1)  # [T, D/2]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [T, 1, D/2]
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        x = x.view(num_tokens, -1, self.head_dim)  # [T, heads, D]
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return out.view(num_tokens, -1)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_position={self.max_position}"


def _inv_freq(head_dim: int, params: dict[str, Any]) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (params["rope_theta"] ** exponents)
    if params["rope_type"] == "linear":
        return inv_freq / params["factor"]
    if params["rope_type"] == "llama3":
        return _llama3_inv_freq(inv_freq, params)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's scaling: wavelengths above original_len / low_freq_factor are divided by
    `factor`, those below original_len / high_freq_factor kept, a linear blend in between."""
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    original_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original_len / low, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= original_len / high) & (wavelen <= original_len / low)
    return torch.where(is_medium, smoothed, scaled)
