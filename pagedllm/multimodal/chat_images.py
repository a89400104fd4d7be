"""A chat request's `image_url` content parts -> checked images and the model's image
placeholder in the text the chat template renders (as vLLM does for templates that take string
content: one placeholder line per image, before the message's text).

Every image is loaded and checked (count, bytes, pixels, source) here, before the prompt is
rendered or anything reaches the engine: a bad image is the caller's ValueError (the server's
400). Shared by the server's chat path and `LLM.chat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedllm.config.multimodal import MultiModalConfig
from pagedllm.multimodal.image_handlers import handler_for
from pagedllm.multimodal.media import load_image_url
from pagedllm.multimodal.processor import expand_placeholders, is_multimodal, placeholder_runs


@dataclass
class ChatImages:
    conversation: list[dict[str, Any]]
    """The messages with each image part replaced by a text part holding the placeholder."""
    images: list[Any] = field(default_factory=list)
    """PIL images, in prompt order."""


def extract_images(conversation: list[dict[str, Any]], hf_config: Any, tokenizer: Any,
                   config: MultiModalConfig, model_dir: str = "") -> ChatImages:
    if not any(_has_image(m) for m in conversation):
        return ChatImages(conversation)
    if not is_multimodal(hf_config):
        raise ValueError("this model takes no images (image_url content parts)")
    placeholder = handler_for(hf_config, model_dir).placeholder(tokenizer)
    count = sum(1 for m in conversation for p in _parts(m) if p.get("type") == "image_url")
    limit = config.limit("image")
    if count > limit:
        raise ValueError(f"the messages hold {count} images; at most {limit} are allowed per "
                         f"prompt (--limit-mm-per-prompt)")
    images: list[Any] = []
    messages = []
    for message in conversation:
        if not _has_image(message):
            messages.append(message)
            continue
        texts: list[str] = []
        placeholders: list[str] = []
        for part in _parts(message):
            if part.get("type") == "image_url":
                try:
                    images.append(load_image_url(part["image_url"]["url"], config))
                except ValueError as e:
                    raise ValueError(f"image {len(images)}: {e}") from None
                placeholders.append(placeholder)
            else:
                texts.append(part.get("text") or "")
        text = "\n".join([*placeholders, "".join(texts)])
        messages.append({**message, "content": [{"type": "text", "text": text}]})
    return ChatImages(messages, images)


def expand_prompt(prompt_ids: list[int], hf_config: Any, images: list[Any],
                  model_dir: str = "") -> list[int]:
    """The prompt as the engine will see it (each placeholder as many tokens as its image's
    features: fixed, or from the image's size), so length checks and usage count what runs."""
    handler = handler_for(hf_config, model_dir)
    runs = placeholder_runs(prompt_ids, handler.image_token_id)
    if len(runs) != len(images):  # the input processor refuses it with the full message
        return prompt_ids
    return expand_placeholders(prompt_ids, handler.image_token_id,
                               [handler.num_tokens(image) for image in images])


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _has_image(message: dict[str, Any]) -> bool:
    return any(p.get("type") == "image_url" for p in _parts(message))
