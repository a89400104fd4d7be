"""LLaVA-1.5 (LlavaForConditionalGeneration): a CLIP vision tower, a two-layer projector and a
Llama decoder.

The runner asks the model for each image's embeddings once (`embed_multimodal`: pixels ->
[tokens_per_image, text hidden]) and writes them over the placeholder tokens' embeddings
(`embed_input_ids`) before the decoder runs on the merged rows (`forward(inputs_embeds=...)`).
The decoder is Llama's; it runs eagerly: the model exposes no `model.layer_runner`, so the
worker's execution strategy logs that it keeps the module calls. The decoder's forward, the
projector, the LM head and the loader are the VLMs' shared ones (vlm_common.py).
"""

from __future__ import annotations

from typing import Any

import torch

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.models.clip_vision import CLIPVisionTower, feature_layers
from pagedllm.model_executor.models.llama import LlamaModel
from pagedllm.model_executor.models.vlm_common import (
    MultiModalProjector,
    VisionLanguageModel,
    drops_cls_token,
)


class LlavaTextModel(LlamaModel):
    """Llama's decoder, fed embeddings the runner merged (text and image rows): LlamaModel's
    forward takes them as inputs_embeds (and passes hidden states between pipeline stages)."""


class LlavaForConditionalGeneration(VisionLanguageModel):
    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        text, vision = config.text_config, config.vision_config
        self.config = config
        self.drop_cls = drops_cls_token(config)
        if config.projector_hidden_act != "gelu":
            raise ValueError(f"projector_hidden_act {config.projector_hidden_act!r} is not "
                             "supported (gelu only)")
        num_layers = feature_layers(vision.num_hidden_layers, config.vision_feature_layer)
        self.vision_tower = CLIPVisionTower(vision, num_layers)
        self.multi_modal_projector = MultiModalProjector(
            vision.hidden_size, text.hidden_size, config.projector_hidden_act,
            bool(getattr(config, "multimodal_projector_bias", True)))
        self.init_language_model(
            LlavaTextModel(text, model_config.max_model_len, prefix="language_model"), text,
            bool(getattr(text, "tie_word_embeddings", False)))

    def embed_multimodal(self, pixel_values: torch.Tensor, feature: Any = None) -> torch.Tensor:
        """[N, 3, H, W] -> [N, tokens_per_image, text hidden]: the rows that replace each
        image's placeholder tokens."""
        features = self.vision_tower(pixel_values.to(self.lm_head.weight.dtype))
        if self.drop_cls:
            features = features[:, 1:]
        return self.multi_modal_projector(features)

    def canonical_name(self, name: str) -> str:
        """Both checkpoint layouts: llava-hf's (`language_model.model.*`, `vision_tower.
        vision_model.*`) and transformers 5's (`model.language_model.*`,
        `model.vision_tower.*`)."""
        return _canonical_name(name)

    def unused_checkpoint_tensor(self, name: str) -> bool:
        # the layers after vision_feature_layer, the pooled output's norm
        return name.startswith(("vision_tower.encoder.layers.", "vision_tower.post_layernorm."))


def _canonical_name(name: str) -> str:
    for old, new in (("model.language_model.", "language_model."),
                     ("language_model.model.", "language_model."),
                     ("language_model.lm_head.", "lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("vision_tower.vision_model.", "vision_tower.")):
        if name.startswith(old):
            name = new + name[len(old):]
    return name
