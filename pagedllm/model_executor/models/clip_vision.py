"""CLIP's vision transformer (the image tower of LLaVA-1.5): patches -> hidden states.

Plain PyTorch modules: the tower runs once per image, outside the paged attention (every patch
attends to every other, nothing is cached), so it needs no KV cache and no step metadata.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str) -> Any:
    if name == "quick_gelu":  # CLIP's own: x * sigmoid(1.702 x)
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name in ("gelu", "gelu_pytorch_tanh"):
        approximate = "tanh" if name == "gelu_pytorch_tanh" else "none"
        return lambda x: F.gelu(x, approximate=approximate)
    raise ValueError(f"unsupported vision activation {name!r}")


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(hidden))
        self.patch_embedding = nn.Conv2d(config.num_channels, hidden, config.patch_size,
                                         stride=config.patch_size, bias=False)
        num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(num_positions, hidden)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W]
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [N, P, hidden]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # [N, S, hidden]
        n, s, hidden = x.shape
        heads = [p(x).view(n, s, self.num_heads, -1).transpose(1, 2)
                 for p in (self.q_proj, self.k_proj, self.v_proj)]
        # no mask for patches (every patch sees every patch); CLIP's text tower is causal
        out = F.scaled_dot_product_attention(*heads, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, s, hidden))


class CLIPMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: Any, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(num_layers))


class CLIPVisionTower(nn.Module):
    """Pixels -> the hidden states after `num_layers` encoder layers (LLaVA reads an inner
    layer's output, vision_feature_layer, so the layers after it are never built; nor is the
    post-layernorm, which only the pooled output uses)."""

    def __init__(self, config: Any, num_layers: int) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config, num_layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # -> [N, 1 + P, hidden]
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            x = layer(x)
        return x


def feature_layers(num_hidden_layers: int, vision_feature_layer: int) -> int:
    """How many encoder layers produce hidden_states[vision_feature_layer] (index 0 is the
    embeddings, so a negative index -k means num_hidden_layers + 1 - k layers)."""
    if not isinstance(vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer {vision_feature_layer!r}: only one layer (an "
                         f"int) is supported")
    index = vision_feature_layer
    if index < 0:
        index += num_hidden_layers + 1
    if not 0 <= index <= num_hidden_layers:
        raise ValueError(f"vision_feature_layer {vision_feature_layer} is out of range")
    return index
