"""Rotary position embedding, neox / HF "rotate-half" layout, with a precomputed cos/sin cache.

For each head, dims [0, D/2) pair with [D/2, D):
    out[:D/2] = x1 * cos - x2 * sin,   out[D/2:] = x2 * cos + x1 * sin
Frequency variants (rope_type): "default", "linear" (positions / factor) and "llama3"
(long wavelengths slowed by `factor`, a smooth ramp between low_freq and high_freq) and
"longrope" (Phi-3: per-frequency short_factor / long_factor, cos/sin scaled by attention_factor),
"yarn" (rotary_yarn.py);
"dynamic" (NTK) only up to the original context length, where it is "default".
Partial rotary (`partial_rotary_factor`, GPT-NeoX's `rotary_pct`): only the first
rotary_dim = head_dim * factor dims of each head are rotated (pairing [0, R/2) with [R/2, R)),
the rest pass through.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pagedllm.model_executor.custom_op import CustomOp
from pagedllm.model_executor.layers.rotary_yarn import yarn_attention_factor, yarn_inv_freq

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope", "dynamic", "yarn")


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
    partial = getattr(hf_config, "partial_rotary_factor", None) or getattr(
        hf_config, "rotary_pct", None
    )
    if partial is not None:
        params.setdefault("partial_rotary_factor", partial)
    params["rope_type"] = params.get("rope_type") or params.pop("type", None) or "default"
    if params["rope_type"] == "longrope":
        _fill_longrope_defaults(params, hf_config)
    if params["rope_type"] == "yarn" and params.get("factor") is None:  # (as transformers)
        params["factor"] = hf_config.max_position_embeddings / params[
            "original_max_position_embeddings"]  # fmt: skip
    if params["rope_type"] == "dynamic":
        params.setdefault(
            "original_max_position_embeddings", getattr(hf_config, "max_position_embeddings", None)
        )
    return params


def _fill_longrope_defaults(params: dict[str, Any], hf_config: Any) -> None:
    # Phi-3 configs may keep original_max_position_embeddings beside rope_parameters, and leave
    # `factor` to be max_position_embeddings / original (as HF computes it).
    if params.get("original_max_position_embeddings") is None:
        params["original_max_position_embeddings"] = hf_config.original_max_position_embeddings
    if params.get("factor") is None:
        original = params["original_max_position_embeddings"]
        params["factor"] = hf_config.max_position_embeddings / original


class RotaryEmbedding(CustomOp):
    def __init__(self, head_dim: int, max_position: int, params: dict[str, Any]) -> None:
        super().__init__()
        if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope_type {params['rope_type']!r} is not supported; "
                f"supported: {SUPPORTED_ROPE_TYPES}"
            )
        if params["rope_type"] == "dynamic":
            _check_dynamic_within_original(params, max_position)
        self.head_dim = head_dim
        self.rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        self.max_position = max_position
        inv_freq = _inv_freq(self.rotary_dim, params, max_position)  # [R/2]
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [max_position, R/2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)  # [max_position, R]
        cache = cache * _attention_factor(params)
        # NOTE: float32 whatever the model dtype, cast at use (HF computes cos/sin in fp32).
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward_cpu(
        self,
        positions: torch.Tensor,  # [T] long
        query: torch.Tensor,  # [T, H * D]
        key: torch.Tensor,  # [T, Hkv * D]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: q and k are views into a layer's qkv rows; the kernel takes any row stride but
        # needs each row's elements adjacent, which a caller's own layout may not give
        if query.stride(-1) != 1 or key.stride(-1) != 1:
            return self.forward_native(positions, query, key)
        # one pass, the same kernel as the fused decoder stack's
        return torch.ops.pagedllm.rotary_embedding(
            query, key, self.cos_sin_cache, positions, self.head_dim, self.rotary_dim
        )

    def forward_native(
        self,
        positions: torch.Tensor,  # [T] long
        query: torch.Tensor,  # [T, H * D]
        key: torch.Tensor,  # [T, Hkv * D]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin_cache[positions].to(query.dtype).chunk(2, dim=-1)  # [T, R/2]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [T, 1, R/2]
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        x = x.view(num_tokens, -1, self.head_dim)  # [T, heads, D]
        x_rot, x_pass = x.split([self.rotary_dim, self.head_dim - self.rotary_dim], dim=-1)
        x1, x2 = x_rot.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x_pass], dim=-1)
        return out.view(num_tokens, -1)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, "
            f"max_position={self.max_position}"
        )


def _check_dynamic_within_original(params: dict[str, Any], max_position: int) -> None:
    """Dynamic NTK scaling (InternLM2.5, ...) rescales the frequencies per sequence length, and
    only past original_max_position_embeddings; up to it the frequencies are the default ones
    (as transformers computes them), which is all we serve."""
    original = params.get("original_max_position_embeddings")
    if original is None or max_position > original:
        raise ValueError(
            f"rope_type 'dynamic' changes its frequencies past {original} positions (per "
            f"sequence length, as transformers does), which is not supported; serve with "
            f"max_model_len <= {original} (asked for {max_position})"
        )


def _inv_freq(rotary_dim: int, params: dict[str, Any], max_position: int) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    if params["rope_type"] == "longrope":
        return 1.0 / (_longrope_factors(params, max_position) * params["rope_theta"] ** exponents)
    if params["rope_type"] == "yarn":
        return yarn_inv_freq(rotary_dim, params)
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


def _longrope_factors(params: dict[str, Any], max_position: int) -> torch.Tensor:
    """[R/2] per-frequency divisors. One set for the whole run, chosen by the longest sequence
    served, as vLLM does: long_factor if max_position exceeds original_max_position_embeddings.
    (HF picks per sequence length, so the two agree when no sequence crosses the original.)"""
    use_long = max_position > params["original_max_position_embeddings"]
    factors = params["long_factor"] if use_long else params["short_factor"]
    return torch.tensor(factors, dtype=torch.float32)


def _attention_factor(params: dict[str, Any]) -> float:
    """The cos/sin scale of longrope: attention_factor, else sqrt(1 + ln(factor) / ln(original))
    (1 when factor <= 1); 1 for the other rope types."""
    if params["rope_type"] == "yarn":
        return yarn_attention_factor(params)
    if params["rope_type"] != "longrope":
        return 1.0
    if params.get("attention_factor") is not None:
        return params["attention_factor"]
    factor, original = params["factor"], params["original_max_position_embeddings"]
    return math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0


def interleaved_to_neox_rows(tensor: torch.Tensor, head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Reorder the q or k projection rows ([heads * head_dim, ...] weight or bias) of a model
    whose rotary pairs adjacent dims (GPT-J style: (0, 1), (2, 3), ...) so that this module's
    rotate-half layout computes the same rotation: within each head, the first rotary_dim rows
    become [0, 2, 4, ..., 1, 3, 5, ...] (pair i = rows i and i + rotary_dim / 2), the rest stay.

    Exact: q and k get the same permutation, so q . k (all attention reads of them) is unchanged.
    """
    evens_then_odds = torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2),
                                 torch.arange(rotary_dim, head_dim)])  # fmt: skip
    rest = tensor.shape[1:]
    per_head = tensor.reshape(-1, head_dim, *rest)
    return per_head[:, evens_then_odds].reshape(tensor.shape)
