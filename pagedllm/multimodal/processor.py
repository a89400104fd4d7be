"""A prompt with images -> token ids with each image's placeholder expanded to its feature
tokens, plus one MultiModalFeature (pixel inputs, positions, content hash) per image.

Runs in the API process, next to the tokenizer; the engine core only ever sees the expanded ids
and the features. The pixel preprocessing is the checkpoint's own image processor
(preprocessor_config.json, loaded by transformers), so the pixels equal what HF's processor
gives the HF model. How many tokens an image takes is the family's rule (`image_handlers.py`):
fixed for LLaVA-1.5, from the image's size for Qwen2-VL and LLaVA-NeXT.
"""

from __future__ import annotations

from typing import Any

from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.multimodal.image import image_identifier
from pagedllm.multimodal.image_handlers import (
    HANDLERS,
    ImageHandler,
    handler_for,
    image_token_id,
    num_image_tokens,
)
from pagedllm.multimodal.inputs import MultiModalFeature

SUPPORTED_MODEL_TYPES = tuple(HANDLERS)
__all__ = ["image_token_id", "num_image_tokens", "is_multimodal", "MultiModalProcessor"]


def is_multimodal(hf_config: Any) -> bool:
    return getattr(hf_config, "vision_config", None) is not None and \
        image_token_id(hf_config) is not None


class MultiModalProcessor:
    def __init__(self, hf_config: Any, model_dir: str, config: MultiModalConfig) -> None:
        self.config = config
        self.handler: ImageHandler = handler_for(hf_config, model_dir)
        self.image_token_id = self.handler.image_token_id

    def process(self, token_ids: list[int], images: list[Any]
                ) -> tuple[list[int], list[MultiModalFeature]]:
        """Expand each image placeholder token of token_ids into the image's number of tokens,
        in order of the images (a prompt the server already expanded is taken as it is);
        ValueError when the counts disagree or exceed the limit."""
        limit = self.config.limit("image")
        if len(images) > limit:
            raise ValueError(f"the prompt has {len(images)} images; at most {limit} are "
                             f"allowed per prompt (--limit-mm-per-prompt)")
        runs = placeholder_runs(token_ids, self.image_token_id)
        if len(runs) != len(images):
            raise ValueError(f"the prompt has {len(runs)} image placeholders and "
                             f"{len(images)} images; each image needs exactly one")
        encoded = [self.handler.encode(image) for image in images]
        counts = [e.num_tokens for e in encoded]
        if [length for _, length in runs] == counts:
            expanded = list(token_ids)
        elif all(length == 1 for _, length in runs):
            expanded = expand_placeholders(token_ids, self.image_token_id, counts)
            runs = placeholder_runs(expanded, self.image_token_id)
        else:
            raise ValueError(f"the prompt's image placeholder runs are {[n for _, n in runs]} "
                             f"tokens long; the images need {counts} (or one token each)")
        features = [MultiModalFeature("image", image_identifier(image), offset, e.num_tokens,
                                      e.pixel_values, e.grid_thw, e.image_size)
                    for (offset, _), image, e in zip(runs, images, encoded)]
        return expanded, features


def expand_placeholders(token_ids: list[int], image_token_id: int,
                        n: int | list[int]) -> list[int]:
    """Each image token -> n of them (n[i] for the i-th image where n is a list): what the
    prompt looks like to the engine."""
    counts = iter(n) if isinstance(n, list) else None
    out: list[int] = []
    for token in token_ids:
        if token == image_token_id:
            out.extend([image_token_id] * (next(counts) if counts is not None else n))
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
