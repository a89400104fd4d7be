"""CLIP (CLIPModel) as an embedding model: a prompt of text gets the text tower's embedding
(causal transformer, the EOS token's state, text_projection: HF's get_text_features), a prompt
holding one image the vision tower's (the CLS state after post_layernorm, visual_projection:
get_image_features), as vLLM serves CLIP.

Both towers are plain PyTorch modules run once per prompt (PoolingRunner's `embed_prompt`
hook): there is no KV cache and nothing to batch across prompts of two different towers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.weight_utils import default_weight_loader
from pagedllm.model_executor.models.clip_vision import CLIPEncoder, CLIPVisionTower
from pagedllm.multimodal.inputs import MultiModalFeature


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings,
                                               config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [1, S]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config, config.num_hidden_layers)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [1, S] -> [hidden]
        x = self.embeddings(input_ids)
        for layer in self.encoder.layers:
            x = layer(x, causal=True)
        x = self.final_layer_norm(x)[0]
        ids = input_ids[0]
        if self.eos_token_id == 2:
            # configs from before transformers PR #24773 pool at the highest token id (the
            # original vocabulary's EOS), as HF still does for them
            return x[int(ids.argmax())]
        eos = (ids == self.eos_token_id).nonzero()
        return x[int(eos[0]) if len(eos) else len(ids) - 1]


class CLIPVisionTransformer(CLIPVisionTower):
    def __init__(self, config: Any) -> None:
        super().__init__(config, config.num_hidden_layers)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [1, 3, H, W] -> [hidden]
        return self.post_layernorm(self(pixel_values)[0, 0])


class CLIPModel(nn.Module):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        text, vision = config.text_config, config.vision_config
        self.text_model = CLIPTextTransformer(text)
        self.vision_model = CLIPVisionTransformer(vision)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(vision.hidden_size, config.projection_dim,
                                           bias=False)

    def embed_prompt(self, token_ids: list[int],
                     features: list[MultiModalFeature] | None) -> torch.Tensor:
        """One prompt's embedding [projection_dim]: its image's if it holds one, else its
        text's."""
        device = self.text_projection.weight.device
        if features:
            pixels = torch.from_numpy(features[0].pixel_values).unsqueeze(0).to(device)
            return self.visual_projection(self.vision_model.pooled(
                pixels.to(self.text_projection.weight.dtype)))
        ids = torch.tensor([token_ids], dtype=torch.long, device=device)
        return self.text_projection(self.text_model(ids))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        return load_plain_weights(self, weights, skip=("logit_scale", "logit_bias"))


def load_plain_weights(model: nn.Module, weights: Iterable[tuple[str, Any]],
                       skip: tuple[str, ...]) -> set[str]:
    """Checkpoint names equal to the module's: copy each; skip the named ones (the contrastive
    loss's scale and bias) and the position-id buffers."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if name in skip or name.endswith("position_ids"):
            continue
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of the model")
        default_weight_loader(params[name], tensor)
        loaded.add(name)
    return loaded
