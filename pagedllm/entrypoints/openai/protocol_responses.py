"""The Responses API (`POST /v1/responses`): the request model and its translation into a chat
request (input items -> messages, flat function tools -> chat tools, text.format ->
response_format), so generation runs through the chat path."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, model_validator

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol_base import MAX_INT32, OpenAIBaseModel


class ResponsesRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    text: dict[str, Any] | None = None
    """{"format": {"type": "text" | "json_object" | "json_schema", ...}}."""
    stream: bool = False
    store: bool = True
    """OpenAI's default; honoured only with --enable-responses-api-store."""
    previous_response_id: str | None = None
    metadata: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    """Accepted (effort/summary): thinking is the model's own; it is returned when the server
    has a --reasoning-parser."""
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1, le=MAX_INT32)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise ValueError("input must not be empty")
        return self


# ---- request -> chat -----------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """A message item's content (a string or input_text/output_text parts) as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where}.content must be a string or a list of parts",
                              param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(
                part.get("text"), str):
            raise BadRequestError(
                f"{where}.content[{j}]: only text parts (input_text, output_text) are supported, "
                f"got {kind!r}", param=f"{where}.content[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input -> chat messages. function_call items join the assistant message before
    them (one message may carry several calls); function_call_output items become tool
    messages; reasoning items are dropped (templates re-derive nothing from them)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where} must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequestError(f"{where}.role must be user, assistant, system or "
                                      f"developer, got {role!r}", param=f"{where}.role")
            # Chat templates know "system"; "developer" is OpenAI's newer name for it.
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments", "{}")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise BadRequestError(f"{where}: a function_call needs a name and arguments "
                                      "(a JSON string)", param=where)
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                # "" rather than null: templates concatenate the content.
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise BadRequestError(f"{where}: a function_call_output needs a call_id",
                                      param=f"{where}.call_id")
            if not isinstance(output, str):
                output = json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue
        else:
            raise BadRequestError(f"{where}: unsupported input item type {kind!r}",
                                  param=f"{where}.type")
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools -> chat's nested ones; other tool types are a 400."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise BadRequestError(f"tools[{i}]: only function tools are supported, got "
                                  f"{tool.get('type')!r}", param=f"tools[{i}].type")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise BadRequestError('tool_choice must be "none", "auto", "required" or '
                                  '{"type": "function", "name": ...}', param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """text.format -> chat's response_format (the structured-output machinery reads that)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequestError("text.format: a json_schema format needs a `schema` object",
                                  param="text.format.schema")
        return {"type": "json_schema", "json_schema": {
            "name": fmt.get("name") or "response", "schema": fmt["schema"],
            "strict": fmt.get("strict")}}
    raise BadRequestError(f"text.format.type must be text, json_object or json_schema, got "
                          f"{kind!r}", param="text.format.type")


def chat_fields(request: ResponsesRequest, history: list[dict[str, Any]],
                stream: bool) -> dict[str, Any]:
    """The chat request (as fields) that answers `request` after the `history` messages."""
    messages = [*history, *input_messages(request.input)]
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    if not messages:
        raise BadRequestError("input must not be empty", param="input")
    fields: dict[str, Any] = {
        "model": request.model, "messages": messages, "tools": chat_tools(request.tools),
        "tool_choice": chat_tool_choice(request.tool_choice),
        "parallel_tool_calls": request.parallel_tool_calls,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
        "seed": request.seed, "ignore_eos": request.ignore_eos,
        "response_format": chat_response_format(request.text), "stream": stream,
    }
    return {k: v for k, v in fields.items() if v is not None}
