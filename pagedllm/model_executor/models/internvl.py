"""InternVL in transformers' format (InternVLForConditionalGeneration: InternVL2.5/3 "-hf"
checkpoints, and InternVL2 ones converted to it): InternViT tiles (a CLS token, layer-scaled
residuals, optional q/k RMS norms), a 2x2 pixel shuffle folding four patches into one token,
a layer-normed MLP projector, and a Qwen2 or Llama decoder fed the merged embeddings.

The original InternVL2 checkpoints (`InternVLChatModel`, remote code) are not this layout; see
the README."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.models.clip_vision import CLIPMLP, feature_layers
from pagedllm.model_executor.models.llama import LlamaModel
from pagedllm.model_executor.models.llava import LlavaTextModel, _canonical_name
from pagedllm.model_executor.models.qwen2 import Qwen2Model
from pagedllm.model_executor.models.vlm_common import (
    MultiModalProjector,
    VisionLanguageModel,
    drops_cls_token,
)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)


def _norm(config: Any) -> nn.Module:
    if config.norm_type == "rms_norm":
        return _RMSNorm(config.hidden_size, config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class InternVisionAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        dim, bias = config.hidden_size, config.attention_bias
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.projection_layer = nn.Linear(dim, dim)
        self.q_norm = _RMSNorm(dim) if config.use_qk_norm else nn.Identity()
        self.k_norm = _RMSNorm(dim) if config.use_qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, S, dim]
        n, s, dim = x.shape
        q, k = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x))  # norms over all heads
        q, k, v = (t.view(n, s, self.num_heads, -1).transpose(1, 2) for t in (q, k, self.v_proj(x)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.projection_layer(out.transpose(1, 2).reshape(n, s, dim))


class InternVisionLayer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = InternVisionAttention(config)
        self.mlp = CLIPMLP(config)  # (fc1 -> act -> fc2, the same names)
        self.layernorm_before = _norm(config)
        self.layernorm_after = _norm(config)
        self.lambda_1 = nn.Parameter(torch.ones(config.hidden_size))
        self.lambda_2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class InternVisionPatchEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, patch, stride=patch)


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = InternVisionPatchEmbeddings(config)
        if not config.use_absolute_position_embeddings:
            raise ValueError("InternViT without absolute position embeddings is not supported")
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, (size // patch) ** 2 + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W]
        patches = self.patch_embeddings.projection(pixel_values).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embeddings


class InternVisionEncoder(nn.Module):
    def __init__(self, config: Any, num_layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(InternVisionLayer(config) for _ in range(num_layers))


class InternVisionModel(nn.Module):
    """Tiles -> hidden states of vision_feature_layer (-1: the last, after the final norm,
    which is the identity with use_mean_pooling)."""

    def __init__(self, config: Any, feature_layer: int) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(config)
        last = feature_layer == -1
        num_layers = config.num_hidden_layers if last else feature_layers(
            config.num_hidden_layers, feature_layer)
        self.encoder = InternVisionEncoder(config, num_layers)
        self.layernorm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                          if last and not config.use_mean_pooling else nn.Identity())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


def pixel_shuffle(x: torch.Tensor, scale: float) -> torch.Tensor:
    """[N, W, H, C] -> [N, W * scale, H * scale, C / scale^2], HF's layout exactly."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(h * scale), int(w * scale), int(c / scale**2))
    return x.permute(0, 2, 1, 3)


def _text_model_cls(text_config: Any) -> type[LlamaModel]:
    kind = getattr(text_config, "model_type", "")
    if kind == "qwen2":
        return Qwen2Model
    if kind == "llama":
        return LlamaModel
    raise ValueError(f"InternVL with a {kind!r} decoder is not supported (qwen2, llama)")


class InternVLForConditionalGeneration(VisionLanguageModel):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        text, vision = config.text_config, config.vision_config
        self.config = config
        self.drop_cls = drops_cls_token(config)
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError("InternVL with several vision_feature_layer values is not supported")
        self.scale = float(config.downsample_ratio)
        self.vision_tower = InternVisionModel(vision, config.vision_feature_layer)
        self.multi_modal_projector = MultiModalProjector(
            vision.hidden_size * int(1 / self.scale) ** 2, text.hidden_size,
            config.projector_hidden_act, pre_norm=True)
        text_cls = _text_model_cls(text)
        # the decoder's forward, fed merged embeddings (the same as LLaVA's)
        model_cls = type(f"InternVL{text_cls.__name__}", (LlavaTextModel,),
                         {"decoder_layer_cls": text_cls.decoder_layer_cls})
        # (transformers ties by the outer config's flag as well as the decoder's)
        self.init_language_model(
            model_cls(text, model_config.max_model_len, prefix="language_model"), text,
            bool(getattr(config, "tie_word_embeddings", False) or
                 getattr(text, "tie_word_embeddings", False)))

    def embed_multimodal(self, pixel_values: torch.Tensor, feature: Any = None) -> torch.Tensor:
        """[1, tiles, 3, H, W] -> [1, tiles * image_seq_length, text hidden]."""
        tiles = pixel_values[0].to(self.lm_head.weight.dtype)
        x = self.vision_tower(tiles)
        if self.drop_cls:
            x = x[:, 1:]
        side = int(x.shape[1] ** 0.5)
        x = pixel_shuffle(x.reshape(x.shape[0], side, side, -1), self.scale)
        x = self.multi_modal_projector(x.reshape(x.shape[0], -1, x.shape[-1]))
        return x.reshape(1, -1, x.shape[-1])

    def canonical_name(self, name: str) -> str:
        return _canonical_name(name)  # (both of transformers' layouts, as LLaVA's)

    def unused_checkpoint_tensor(self, name: str) -> bool:
        return name.startswith("vision_tower.encoder.layer.")  # past vision_feature_layer
