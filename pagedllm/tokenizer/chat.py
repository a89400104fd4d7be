"""Chat messages -> prompt text through the model's chat template (jinja, as transformers does)."""

from __future__ import annotations

from typing import Any

Conversation = list[dict[str, Any]]


def normalize_messages(messages: Conversation) -> Conversation:
    """Text-part content (OpenAI's [{"type": "text", "text": ...}]) -> plain strings."""
    normalized = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError("each message must be an object with a 'role'")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise ValueError("only text content parts are supported")
                parts.append(part.get("text", ""))
            content = "".join(parts)
        normalized.append({**message, "content": content if content is not None else ""})
    return normalized


def apply_chat_template(
    tokenizer: Any,
    messages: Conversation,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            "the model has no chat template; pass one (chat_template= / --chat-template FILE)"
        )
    return tokenizer.apply_chat_template(
        normalize_messages(messages),
        chat_template=template,
        add_generation_prompt=add_generation_prompt and not continue_final_message,
        continue_final_message=continue_final_message,
        tokenize=False,
    )
