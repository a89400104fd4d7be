"""A prompt with images -> token ids with each image's placeholder expanded to its feature
tokens, plus one MultiModalFeature (pixel inputs, positions, content hash) per image.

Runs in the API process, next to the tokenizer; the engine core only ever sees the expanded ids
and the features. The pixel preprocessing is the checkpoint's own image processor
(preprocessor_config.json, loaded by transformers), so the pixels equal what HF's processor
gives the HF model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.multimodal.image import image_identifier
from pagedllm.multimodal.inputs import MultiModalFeature

SUPPORTED_MODEL_TYPES = ("llava",)


def is_multimodal(hf_config: Any) -> bool:
    return getattr(hf_config, "vision_config", None) is not None


def num_image_tokens(hf_config: Any) -> int:
    """LLaVA-1.5: one token per vision patch ((image_size / patch_size)^2), plus the CLS token
    where vision_feature_select_strategy is "full" ("default" drops it)."""
    vision = hf_config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if hf_config.vision_feature_select_strategy == "full" else 0)


class MultiModalProcessor:
    def __init__(self, hf_config: Any, model_dir: str, config: MultiModalConfig) -> None:
        model_type = getattr(hf_config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"images are not supported for model type {model_type!r} "
                             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        self.config = config
        self.image_token_id = int(hf_config.image_token_index)
        self.tokens_per_image = num_image_tokens(hf_config)
        self.model_dir = model_dir
        self._image_processor: Any = None

    @property
    def image_processor(self) -> Any:
        if self._image_processor is None:  # loaded at the first image, not at start-up
            from transformers import AutoImageProcessor

            self._image_processor = AutoImageProcessor.from_pretrained(self.model_dir)
        return self._image_processor

    def process(self, token_ids: list[int], images: list[Any]
                ) -> tuple[list[int], list[MultiModalFeature]]:
        """Expand each `<image>` token of token_ids into tokens_per_image copies, in order of
        the images (a prompt the server already expanded is taken as it is); ValueError when
        the counts disagree or exceed the limit."""
        limit = self.config.limit("image")
        if len(images) > limit:
            raise ValueError(f"the prompt has {len(images)} images; at most {limit} are "
                             f"allowed per prompt (--limit-mm-per-prompt)")
        runs = placeholder_runs(token_ids, self.image_token_id)
        n = self.tokens_per_image
        if len(runs) == len(images) and all(length == n for _, length in runs):
            expanded = list(token_ids)
        elif len(runs) == len(images) and all(length == 1 for _, length in runs):
            expanded = expand_placeholders(token_ids, self.image_token_id, n)
            runs = placeholder_runs(expanded, self.image_token_id)
        else:
            raise ValueError(f"the prompt has {len(runs)} image placeholders and "
                             f"{len(images)} images; each image needs exactly one")
        features = [MultiModalFeature("image", image_identifier(image), offset, n,
                                      self._pixel_values(image))
                    for (offset, _), image in zip(runs, images)]
        return expanded, features

    def _pixel_values(self, image: Any) -> np.ndarray:
        out = self.image_processor(images=[image], return_tensors="np")
        return np.asarray(out["pixel_values"][0], dtype=np.float32)


def expand_placeholders(token_ids: list[int], image_token_id: int, n: int) -> list[int]:
    """Each image token -> n of them (what the prompt looks like to the engine)."""
    out: list[int] = []
    for token in token_ids:
        if token == image_token_id:
            out.extend([image_token_id] * n)
        else:
            out.append(token)
    return out


def placeholder_runs(token_ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """(offset, length) of each maximal run of image tokens."""
    runs: list[tuple[int, int]] = []
    for i, token in enumerate(token_ids):
        if token != image_token_id:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs
