"""SigLIP (SiglipModel) as an embedding model, as CLIP (clip.py): text prompts get the text
tower's embedding (bidirectional transformer, the last token's state after final_layer_norm,
then `head`: HF's get_text_features), image prompts the vision tower's (patches without a CLS
token, post_layernorm, the multi-head attention pooling head: get_image_features)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.models.clip import CLIPTextEmbeddings, load_plain_weights
from pagedllm.model_executor.models.clip_vision import CLIPMLP, CLIPEncoder
from pagedllm.multimodal.inputs import MultiModalFeature


class SiglipTextTransformer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config, config.num_hidden_layers)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, getattr(config, "projection_size", None)
                              or config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [1, S] -> [projection]
        x = self.embeddings(input_ids)
        for layer in self.encoder.layers:
            x = layer(x)  # bidirectional, unlike CLIP's text tower
        return self.head(self.final_layer_norm(x)[0, -1])


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size,
                                         config.patch_size, stride=config.patch_size)
        num_patches = (config.image_size // config.patch_size) ** 2
        self.position_embedding = nn.Embedding(num_patches, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W]
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight


class SiglipAttentionPoolingHead(nn.Module):
    """One learned query (the probe) attends over the patches (torch's MultiheadAttention
    parameter layout, as the checkpoint stores it), then a residual MLP."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.attention = nn.MultiheadAttention(hidden, self.num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [1, S, hidden] -> [hidden]
        attention = self.attention
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
        q, k, v = (F.linear(t, w, b).view(t.shape[0], t.shape[1], self.num_heads, -1)
                   .transpose(1, 2)
                   for t, w, b in ((self.probe, w_q, b_q), (x, w_k, b_k), (x, w_v, b_v)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 1, -1)
        out = attention.out_proj(out)
        return (out + self.mlp(self.layernorm(out)))[0, 0]


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        if not getattr(config, "vision_use_head", True):
            raise ValueError("SigLIP without the vision pooling head has no image embedding")
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = CLIPEncoder(config, config.num_hidden_layers)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipAttentionPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [1, 3, H, W] -> [hidden]
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.head(self.post_layernorm(x))


class SiglipModel(nn.Module):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        self.text_model = SiglipTextTransformer(config.text_config)
        self.vision_model = SiglipVisionTransformer(config.vision_config)

    def embed_prompt(self, token_ids: list[int],
                     features: list[MultiModalFeature] | None) -> torch.Tensor:
        weight = self.text_model.head.weight
        if features:
            pixels = torch.from_numpy(features[0].pixel_values).unsqueeze(0)
            return self.vision_model(pixels.to(weight.device, weight.dtype))
        return self.text_model(torch.tensor([token_ids], dtype=torch.long, device=weight.device))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_plain_weights(self, weights, skip=("logit_scale", "logit_bias"))
