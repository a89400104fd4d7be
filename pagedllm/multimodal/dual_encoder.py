"""Dual encoders (CLIP, SigLIP) served for embeddings: a text prompt is embedded by the text
tower, an image prompt by the vision tower, as vLLM serves them. An image prompt is vLLM's
`{"prompt": "", "multi_modal_data": {"image": image}}` offline, or a chat-style `messages`
request holding one `image_url` part on /v1/embeddings; it carries no text, so it travels as one
dummy token plus the image's feature (the PoolingRunner hands the model the feature)."""

from __future__ import annotations

from typing import Any

from pagedllm.multimodal.image import image_identifier
from pagedllm.multimodal.image_handlers import load_image_processor
from pagedllm.multimodal.inputs import MultiModalFeature

DUAL_ENCODER_MODEL_TYPES = ("clip", "siglip")

IMAGE_PROMPT_TOKEN_ID = 0
"""The one token an image prompt holds (the towers never read it; usage counts it)."""


def is_dual_encoder(hf_config: Any) -> bool:
    return getattr(hf_config, "model_type", None) in DUAL_ENCODER_MODEL_TYPES


def image_prompt(prompt_text: Any, images: list[Any], model_dir: str
                 ) -> tuple[list[int], list[MultiModalFeature]]:
    """(token ids, [feature]) of an image prompt; ValueError unless it is exactly one image
    and no text (a dual encoder embeds one or the other)."""
    if prompt_text:
        raise ValueError("a CLIP/SigLIP prompt embeds either text or one image: pass the image "
                         "with an empty prompt")
    if len(images) != 1:
        raise ValueError(f"a CLIP/SigLIP image prompt holds exactly one image, got "
                         f"{len(images)}")
    import numpy as np

    image = images[0]
    pixels = load_image_processor(model_dir)(images=[image], return_tensors="np")
    feature = MultiModalFeature("image", image_identifier(image), 0, 1,
                                np.asarray(pixels["pixel_values"][0], dtype=np.float32))
    return [IMAGE_PROMPT_TOKEN_ID], [feature]


def split_embedding_message(messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """A chat-style embedding request's messages -> (their text, their image URLs)."""
    texts: list[str] = []
    urls: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "image_url":
                url = (part.get("image_url") or {}).get("url")
                urls.append(url)
            else:
                raise ValueError(f"unsupported content part type {kind!r} (text or image_url)")
    return "".join(texts), urls
