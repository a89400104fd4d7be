"""Anthropic Messages request models, their translation into a chat request (content blocks ->
chat messages, input_schema tools -> function tools, tool_choice types -> chat's), and
Anthropic's error body."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Literal

from pydantic import Field

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol_base import MAX_INT32, OpenAIBaseModel

ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "overloaded_error",
}


def anthropic_error_body(status: int, message: str, type_: str | None = None,
                         param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """{"type": "error", "error": {"type", "message"}}: the type follows the status, as the
    anthropic client maps statuses to its exception classes."""
    del type_, param, code  # OpenAI's fields; Anthropic's body has none of them
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}


class AnthropicMessage(OpenAIBaseModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class AnthropicTool(OpenAIBaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class AnthropicCountTokensRequest(OpenAIBaseModel):
    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None


class AnthropicMessagesRequest(AnthropicCountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_INT32)
    """Required, as Anthropic's API requires it."""
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    """Accepted: thinking is the model's own (a thinking block with --reasoning-parser)."""


# ---- request -> chat -----------------------------------------------------------------------------


def _block_text(block: dict[str, Any], where: str) -> str:
    if block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise BadRequestError(f"{where}: expected a text block, got {block.get('type')!r}",
                              param=where)
    return block["text"]


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "".join(_block_text(b, f"system[{i}]") for i, b in enumerate(system)) or None


def _tool_result_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_block_text(b, f"{where}.content[{i}]") for i, b in enumerate(content))
    raise BadRequestError(f"{where}.content must be a string or text blocks", param=where)


def _messages_of(message: AnthropicMessage, i: int) -> list[dict[str, Any]]:
    """One Anthropic message -> chat messages: a user's tool_result blocks become tool messages
    (before its text), an assistant's tool_use blocks its tool_calls."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_block_text(block, where))
        elif kind == "tool_use" and message.role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
                raise BadRequestError(f"{where}: a tool_use block needs a name and an input "
                                      "object", param=where)
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block["name"], "arguments": json.dumps(block["input"])}})
        elif kind == "tool_result" and message.role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise BadRequestError(f"{where}: a tool_result block needs a tool_use_id",
                                      param=where)
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": _tool_result_text(block.get("content"), where)})
        elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
            continue  # earlier thinking: templates drop it from the history anyway
        else:
            raise BadRequestError(f"{where}: unsupported content block {kind!r} in a "
                                  f"{message.role} message", param=where)
    out = list(results)
    if calls:
        out.append({"role": "assistant", "content": "".join(texts), "tool_calls": calls})
    elif texts or not results:
        out.append({"role": message.role, "content": "".join(texts)})
    return out


def chat_tool_choice(choice: dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequestError('tool_choice.type must be "auto", "any", "tool" (with a name) or '
                          '"none"', param="tool_choice")


def chat_fields(request: AnthropicCountTokensRequest) -> dict[str, Any]:
    """The chat request (as fields) for an Anthropic request (count_tokens: no sampling)."""
    messages = [m for i, message in enumerate(request.messages)
                for m in _messages_of(message, i)]
    system = system_text(request.system)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    tools = None
    if request.tools:
        tools = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in request.tools]
    fields: dict[str, Any] = {"model": request.model, "messages": messages, "tools": tools,
                              "tool_choice": chat_tool_choice(request.tool_choice)}
    if isinstance(request, AnthropicMessagesRequest):
        fields.update(max_tokens=request.max_tokens, stop=request.stop_sequences,
                      temperature=request.temperature, top_p=request.top_p,
                      top_k=request.top_k, stream=request.stream)
        if request.tool_choice and request.tool_choice.get("disable_parallel_tool_use"):
            fields["parallel_tool_calls"] = False
    return {k: v for k, v in fields.items() if v is not None}
