"""Each vision-language family's image rule: the placeholder a chat message gets, how many
tokens an image takes and the pixel inputs its encoder reads (through the checkpoint's own
image processor, so they equal what HF's processor gives the HF model).

- LLaVA-1.5: a fixed number of tokens (the tower's patches), pixels [3, H, W].
- LLaVA-NeXT: AnyRes (anyres.py): a base tile and the tiles of the best grid resolution,
  unpadded, a newline token per row: the count depends on the image's size; pixels [tiles, 3, H,
  W].
- InternVL (transformers' format): tiles of the image processor's size (a grid by aspect ratio
  plus a thumbnail), image_seq_length tokens each; pixels [tiles, 3, H, W].
- Qwen2-VL: dynamic resolution: the image is resized to a multiple of patch x merge within
  [min_pixels, max_pixels], cut into patches (grid_thw) and merged 2x2: grid_h * grid_w / 4
  tokens, pixels [patches, C * T * P * P].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EncodedImage:
    num_tokens: int
    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int] | None = None
    image_size: tuple[int, int] | None = None


def image_token_id(hf_config: Any) -> int | None:
    """The image placeholder token: LLaVA's `image_token_index`, Qwen2-VL's `image_token_id`."""
    for name in ("image_token_index", "image_token_id"):
        value = getattr(hf_config, name, None)
        if value is not None:
            return int(value)
    return None


def num_image_tokens(hf_config: Any) -> int:
    """LLaVA-1.5: one token per vision patch ((image_size / patch_size)^2), plus the CLS token
    where vision_feature_select_strategy is "full" ("default" drops it)."""
    vision = hf_config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if hf_config.vision_feature_select_strategy == "full" else 0)


@functools.lru_cache(maxsize=4)
def load_image_processor(model_dir: str) -> Any:
    """The checkpoint's image processor, loaded once per directory (the chat path counts tokens
    with it, the input processor makes the pixels)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir)


class ImageHandler:
    placeholder_format = "{image}"
    """The text one image becomes in a chat message ({image}: the image token)."""

    def __init__(self, hf_config: Any, model_dir: str) -> None:
        self.hf_config = hf_config
        self.model_dir = model_dir
        token = image_token_id(hf_config)
        assert token is not None
        self.image_token_id = token

    @property
    def image_processor(self) -> Any:
        return load_image_processor(self.model_dir)

    def placeholder(self, tokenizer: Any) -> str:
        return self.placeholder_format.format(
            image=tokenizer.convert_ids_to_tokens(self.image_token_id))

    def num_tokens(self, image: Any) -> int:
        return self.encode(image).num_tokens

    def encode(self, image: Any) -> EncodedImage:
        raise NotImplementedError


class LlavaImages(ImageHandler):
    def num_tokens(self, image: Any) -> int:
        return num_image_tokens(self.hf_config)

    def encode(self, image: Any) -> EncodedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        return EncodedImage(self.num_tokens(image),
                            np.asarray(out["pixel_values"][0], dtype=np.float32))


class Qwen2VLImages(ImageHandler):
    placeholder_format = "<|vision_start|>{image}<|vision_end|>"

    def num_tokens(self, image: Any) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        processor = self.image_processor
        size = processor.size
        shortest = size["shortest_edge"] if "shortest_edge" in size else size.shortest_edge
        longest = size["longest_edge"] if "longest_edge" in size else size.longest_edge
        merge = processor.merge_size
        height, width = smart_resize(image.height, image.width, processor.patch_size * merge,
                                     shortest, longest)
        return (height // processor.patch_size) * (width // processor.patch_size) // merge**2

    def encode(self, image: Any) -> EncodedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        t, h, w = (int(x) for x in np.asarray(out["image_grid_thw"])[0])
        merge = int(self.hf_config.vision_config.spatial_merge_size)
        return EncodedImage(t * h * w // merge**2,
                            np.asarray(out["pixel_values"], dtype=np.float32), (t, h, w))


class LlavaNextImages(ImageHandler):
    """AnyRes: a base tile plus the tiles of the best grid resolution (anyres.py)."""

    def num_tokens(self, image: Any) -> int:
        from pagedllm.multimodal.anyres import num_anyres_tokens

        vision = self.hf_config.vision_config
        return num_anyres_tokens((image.height, image.width),
                                 self.hf_config.image_grid_pinpoints, vision.image_size,
                                 vision.image_size // vision.patch_size,
                                 num_image_tokens(self.hf_config))

    def encode(self, image: Any) -> EncodedImage:
        out = self.image_processor(images=[image], return_tensors="np")
        size = (image.height, image.width)
        if tuple(int(x) for x in np.asarray(out["image_sizes"])[0]) != size:
            raise ValueError("the image processor changed the image's size")
        return EncodedImage(self.num_tokens(image),
                            np.asarray(out["pixel_values"][0], dtype=np.float32),
                            image_size=size)


class InternVLImages(ImageHandler):
    """Dynamic tiling (the image processor's crop_to_patches, on as InternVL's processor sets
    it): a grid of tiles plus a thumbnail, image_seq_length tokens each."""

    placeholder_format = "<img>{image}</img>"

    def encode(self, image: Any) -> EncodedImage:
        out = self.image_processor(images=[image], crop_to_patches=True, return_tensors="np")
        pixels = np.asarray(out["pixel_values"], dtype=np.float32)  # [tiles, 3, H, W]
        return EncodedImage(len(pixels) * int(self.hf_config.image_seq_length), pixels)


HANDLERS: dict[str, type[ImageHandler]] = {
    "internvl": InternVLImages,
    "llava": LlavaImages,
    "llava_next": LlavaNextImages,
    "qwen2_vl": Qwen2VLImages,
}


def handler_for(hf_config: Any, model_dir: str) -> ImageHandler:
    model_type = getattr(hf_config, "model_type", "")
    if model_type not in HANDLERS:
        raise ValueError(f"images are not supported for model type {model_type!r} "
                         f"(supported: {', '.join(HANDLERS)})")
    return HANDLERS[model_type](hf_config, model_dir)
