"""LLaVA-1.5 (LlavaForConditionalGeneration): a CLIP vision tower, a two-layer projector and a
Llama decoder.

The runner asks the model for each image's embeddings once (`embed_multimodal`: pixels ->
[tokens_per_image, text hidden]) and writes them over the placeholder tokens' embeddings
(`embed_input_ids`) before the decoder runs on the merged rows (`forward(inputs_embeds=...)`).
The decoder is Llama's; it runs eagerly: the model exposes no `model.layer_runner`, so the
worker's execution strategy logs that it keeps the module calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config.model import ModelConfig
from pagedllm.model_executor.layers.embedding import ParallelLMHead
from pagedllm.model_executor.layers.logits import LogitsProcessor
from pagedllm.model_executor.layers.weight_utils import default_weight_loader, load_packed_weights
from pagedllm.model_executor.models.clip_vision import CLIPVisionTower, feature_layers
from pagedllm.model_executor.models.llama import LlamaForCausalLM, LlamaModel


class LlavaTextModel(LlamaModel):
    """Llama's decoder, fed embeddings the runner merged (text and image rows): LlamaModel's
    forward takes them as inputs_embeds (and passes hidden states between pipeline stages)."""


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, act: str, bias: bool) -> None:
        super().__init__()
        if act != "gelu":
            raise ValueError(f"projector_hidden_act {act!r} is not supported (gelu only)")
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


class LlavaForConditionalGeneration(nn.Module):
    supports_multimodal = True
    supports_tensor_parallel = True  # (the decoder splits; the vision tower stays replicated)
    supports_pipeline_parallel = True  # (the decoder's layers; the first stage merges images)
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

    def __init__(self, model_config: ModelConfig) -> None:
        super().__init__()
        config = model_config.hf_config
        text, vision = config.text_config, config.vision_config
        self.config = config
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy "
                             f"{config.vision_feature_select_strategy!r} is not supported")
        self.drop_cls = config.vision_feature_select_strategy == "default"
        num_layers = feature_layers(vision.num_hidden_layers, config.vision_feature_layer)
        self.vision_tower = CLIPVisionTower(vision, num_layers)
        self.multi_modal_projector = LlavaMultiModalProjector(
            vision.hidden_size, text.hidden_size, config.projector_hidden_act,
            bool(getattr(config, "multimodal_projector_bias", True)))
        self.language_model = LlavaTextModel(text, model_config.max_model_len,
                                             prefix="language_model")
        self.tie_word_embeddings = bool(getattr(text, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head = self.language_model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(text.vocab_size)

    def embed_multimodal(self, pixel_values: torch.Tensor, feature: Any = None) -> torch.Tensor:
        """[N, 3, H, W] -> [N, tokens_per_image, text hidden]: the rows that replace each
        image's placeholder tokens."""
        features = self.vision_tower(pixel_values.to(self.lm_head.weight.dtype))
        if self.drop_cls:
            features = features[:, 1:]
        return self.multi_modal_projector(features)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.language_model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        """Both checkpoint layouts: llava-hf's (`language_model.model.*`, `vision_tower.
        vision_model.*`) and transformers 5's (`model.language_model.*`, `model.vision_tower.*`).
        The decoder's tensors go through the packed loader (q/k/v -> qkv_proj); the tower's and
        the projector's are plain copies (CLIP's q/k/v stay separate)."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        text_weights: list[tuple[str, Any]] = []
        for name, tensor in weights:
            name = _canonical_name(name)
            if name.startswith(("language_model.", "lm_head.")):
                text_weights.append((name, tensor))
                continue
            if name not in params:
                if _unused_vision_tensor(name):
                    continue  # the layers after vision_feature_layer, the pooled output's norm
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of the model")
            default_weight_loader(params[name], tensor)
            loaded.add(name)
        return loaded | load_packed_weights(self, text_weights, self.packed_modules_mapping,
                                            self._skip_text)

    def _skip_text(self, name: str) -> bool:
        return "rotary_emb.inv_freq" in name or (
            self.tie_word_embeddings and name.startswith("lm_head."))


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


def _unused_vision_tensor(name: str) -> bool:
    return name.startswith(("vision_tower.encoder.layers.", "vision_tower.post_layernorm."))
