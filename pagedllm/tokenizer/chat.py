"""Chat messages -> prompt text through the model's chat template (jinja, as transformers does)."""

from __future__ import annotations

import json
from typing import Any

Conversation = list[dict[str, Any]]

_RESERVED_KWARGS = frozenset({"conversation", "messages", "tools", "chat_template", "tokenize",
                              "add_generation_prompt", "continue_final_message", "return_dict",
                              "documents", "tokenizer_kwargs"})
"""apply_chat_template's own arguments: chat_template_kwargs cannot override them."""


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
        if message.get("tool_calls"):
            normalized[-1]["tool_calls"] = [_call_for_template(c) for c in message["tool_calls"]]
    return normalized


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sends a call's arguments as JSON text; templates (Qwen2.5's, Llama 3's) write them
    with `tojson`, so they get the object (as vLLM and transformers do)."""
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"tool call arguments must be JSON text: {e}") from e
    return {**call, "function": function}


def apply_chat_template(
    tokenizer: Any,
    messages: Conversation,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """`tools` (OpenAI-shaped definitions) and `chat_template_kwargs` (e.g. enable_thinking) are
    passed to the template as variables."""
    extra = {k: v for k, v in (chat_template_kwargs or {}).items() if k not in _RESERVED_KWARGS}
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
        tools=tools,
        **extra,
    )


def apply_request_chat_template(
    tokenizer: Any,
    messages: Conversation,
    chat_template: str,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """apply_chat_template for a template a client sent: rendered in the bounded sandbox
    (chat_sandbox.py) rather than by transformers."""
    from pagedllm.tokenizer.chat_sandbox import render_request_template

    extra = {k: v for k, v in (chat_template_kwargs or {}).items() if k not in _RESERVED_KWARGS}
    return render_request_template(tokenizer, normalize_messages(messages), chat_template,
                                   add_generation_prompt, continue_final_message, tools, extra)
