"""Qwen2-VL (Qwen2VLForConditionalGeneration): a vision transformer with 2D rotary positions
and a 2x2 patch merger, and the Qwen2 decoder with multimodal rotary positions (M-RoPE).

Dynamic resolution: each image arrives as its own number of patches ([patches, C * T * P * P],
laid out by the image processor in 2x2 merge blocks) with its grid_thw; the tower attends
within the image, the merger folds each block of 2x2 patches into one token. The runner hands
the decoder [3, T] positions (multimodal/mrope.py) that this model's rotary splits into
temporal / height / width sections. Eager decoder (no fused stack: its rotary is not the
stack's). The decoder's forward, the LM head and the loader are the VLMs' shared ones
(vlm_common.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.mrope import MRotaryEmbedding
from pagedllm.model_executor.layers.rotary import RotaryEmbedding, rope_parameters
from pagedllm.model_executor.models.clip_vision import _activation
from pagedllm.model_executor.models.llama import head_dim_of
from pagedllm.model_executor.models.qwen2 import Qwen2Model
from pagedllm.model_executor.models.vlm_common import VisionLanguageModel


class Qwen2VLTextModel(Qwen2Model):
    """Qwen2's decoder with M-RoPE, fed embeddings the runner merged (text and image rows)."""

    def build_rotary_embs(self, config: Any, max_position: int) -> list[RotaryEmbedding]:
        params = rope_parameters(config)
        section = params.pop("mrope_section", None)
        if params["rope_type"] == "mrope":  # (older configs name M-RoPE as a rope type)
            params["rope_type"] = "default"
        if section is None:
            raise ValueError("Qwen2-VL's config has no rope mrope_section")
        rotary = MRotaryEmbedding(head_dim_of(config), max_position, params, section)
        return [rotary] * config.num_hidden_layers


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Qwen2VLVisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        s = x.shape[0]  # [S, dim]: one image's patches
        q, k, v = self.qkv(x).view(s, 3, self.num_heads, -1).unbind(1)  # [S, heads, hd]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [S, 1, hd]
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                             v.transpose(0, 1))  # every patch sees every patch
        return self.proj(out.transpose(0, 1).reshape(s, -1))


class Qwen2VLVisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Qwen2VLVisionBlock(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Qwen2VLVisionAttention(dim, config.num_heads)
        self.mlp = Qwen2VLVisionMLP(dim, int(dim * config.mlp_ratio), config.hidden_act)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class Qwen2VLPatchEmbed(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embed_dim = config.embed_dim
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel, stride=kernel,
                              bias=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [S, C * T * P * P]
        # the kernel covers the whole patch: the convolution is one matrix product per patch
        return F.linear(patches, self.proj.weight.view(self.embed_dim, -1))


class Qwen2VLPatchMerger(nn.Module):
    def __init__(self, dim: int, context_dim: int, merge_size: int) -> None:
        super().__init__()
        self.hidden_size = context_dim * merge_size**2
        self.ln_q = nn.LayerNorm(context_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.hidden_size, self.hidden_size), nn.GELU(),
                                 nn.Linear(self.hidden_size, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.hidden_size))


class Qwen2VLVisionTransformer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.merge_size = config.spatial_merge_size
        self.patch_embed = Qwen2VLPatchEmbed(config)
        self.blocks = nn.ModuleList(Qwen2VLVisionBlock(config) for _ in range(config.depth))
        self.merger = Qwen2VLPatchMerger(config.hidden_size, config.embed_dim, self.merge_size)
        head_dim = config.embed_dim // config.num_heads
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        spatial = head_dim // 2
        inv_freq = 1.0 / theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, grid_thw: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S, head_dim] of each patch's (row, column), in the processor's patch
        order (2x2 merge blocks, row-major over the blocks, repeated per frame)."""
        t, h, w = grid_thw
        m = self.merge_size
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        rows = rows.transpose(1, 2).reshape(-1).repeat(t)
        cols = cols.transpose(1, 2).reshape(-1).repeat(t)
        inv_freq = self.inv_freq.to(rows.device)
        freqs = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)
        freqs = torch.cat([freqs, freqs], dim=-1)
        return freqs.cos(), freqs.sin()

    def forward(self, patches: torch.Tensor, grid_thw: tuple[int, int, int]) -> torch.Tensor:
        """One image: [t * h * w, C * T * P * P] -> [t * h * w / merge^2, text hidden]."""
        x = self.patch_embed(patches)
        cos, sin = (r.to(x.device) for r in self.rotary(grid_thw))
        t, h, w = grid_thw
        frames = []
        for frame in x.split(h * w):  # attention within a frame (an image has one)
            for block in self.blocks:
                frame = block(frame, cos[: h * w], sin[: h * w])
            frames.append(frame)
        return self.merger(torch.cat(frames))


class Qwen2VLForConditionalGeneration(VisionLanguageModel):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        text, vision = config.text_config, config.vision_config
        self.config = config
        self.mrope_spatial_merge_size = int(vision.spatial_merge_size)
        """The runner hands this model [3, T] M-RoPE positions (worker/mm_embeddings.py)."""
        self.visual = Qwen2VLVisionTransformer(vision)
        self.init_language_model(
            Qwen2VLTextModel(text, model_config.max_model_len, prefix="language_model"), text,
            bool(getattr(config, "tie_word_embeddings", False) or
                 getattr(text, "tie_word_embeddings", False)))

    def embed_multimodal(self, pixel_values: torch.Tensor, feature: Any) -> torch.Tensor:
        """[1, patches, C * T * P * P] -> [1, tokens, text hidden] for the feature's grid."""
        dtype = self.visual.merger.ln_q.weight.dtype
        return self.visual(pixel_values[0].to(dtype), tuple(feature.grid_thw)).unsqueeze(0)

    def canonical_name(self, name: str) -> str:
        """transformers 5's layout (`model.language_model.*`, `model.visual.*`) and the original
        one (`model.*` for the decoder, `visual.*`)."""
        return _canonical_name(name)


def _canonical_name(name: str) -> str:
    for old, new in (("model.language_model.", "language_model."),
                     ("model.visual.", "visual."),
                     ("model.", "language_model.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name
