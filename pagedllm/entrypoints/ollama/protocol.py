"""Ollama request models and their translation into chat requests: `options` -> sampling fields,
`format` -> response_format, messages (tool calls with object arguments, tool results by name)
-> chat messages; and Ollama's error body."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol_base import MAX_INT32, OpenAIBaseModel

OPTION_FIELDS = {
    # Ollama option -> chat request field
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}
IGNORED_OPTIONS = {
    # Load-time and llama.cpp-runtime knobs: the server's flags decide these.
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "num_thread", "numa", "use_mmap",
    "use_mlock", "num_keep", "repeat_last_n", "penalize_newline", "vocab_only", "logits_all",
    "embedding_only", "f16_kv", "tfs_z", "typical_p", "mirostat", "mirostat_tau", "mirostat_eta",
}


def ollama_error_body(status: int, message: str, type_: str | None = None,
                      param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """Ollama's {"error": "..."} (the ollama client raises ResponseError with it)."""
    del status, type_, param, code
    return {"error": message}


class OllamaChatRequest(OpenAIBaseModel):
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    """Ollama streams unless told not to."""
    think: bool | str | None = None
    keep_alive: float | str | None = None


class OllamaGenerateRequest(OpenAIBaseModel):
    model: str = Field(min_length=1)
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    """The previous answer's `context` (its token ids): this prompt continues it."""
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    think: bool | str | None = None
    images: list[Any] | None = None
    keep_alive: float | str | None = None


class OllamaEmbedRequest(OpenAIBaseModel):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    options: dict[str, Any] | None = None
    dimensions: int | None = Field(None, ge=1, le=MAX_INT32)
    keep_alive: float | str | None = None


class OllamaShowRequest(OpenAIBaseModel):
    model: str | None = None
    name: str | None = None
    """The older field name."""
    verbose: bool = False


def sampling_fields(options: dict[str, Any] | None) -> dict[str, Any]:
    """`options` -> chat request fields; unknown options are a 400 (a typo must not be
    silently ignored), load-time ones are accepted and ignored."""
    fields: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key in OPTION_FIELDS:
            fields[OPTION_FIELDS[key]] = value
        elif key == "num_predict":
            # -1: until the context is full (also what leaving it out means here); -2: the same
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < -2):
                raise BadRequestError("options.num_predict must be positive, -1 or -2",
                                      param="options.num_predict")
            if value is not None and value >= 0:
                fields["max_tokens"] = value
        elif key not in IGNORED_OPTIONS:
            raise BadRequestError(f"options: unknown option {key!r}", param=f"options.{key}")
    if fields.get("max_tokens") == 0:
        raise BadRequestError("options.num_predict must be positive, -1 or -2",
                              param="options.num_predict")
    return fields


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise BadRequestError('format must be "json" or a JSON schema object', param="format")


def _arguments(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise BadRequestError(f"{where}: arguments must be an object", param=where)
    return json.dumps(value)


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama messages -> chat messages. Ollama's calls carry no ids: each gets one from its
    position, and a tool message answers the latest call of its tool_name."""
    out: list[dict[str, Any]] = []
    call_ids: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"{where} must be an object", param=where)
        role, content = message.get("role"), message.get("content") or ""
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequestError(f"{where}.role must be system, user, assistant or tool, got "
                                  f"{role!r}", param=f"{where}.role")
        if not isinstance(content, str):
            raise BadRequestError(f"{where}.content must be a string", param=f"{where}.content")
        if message.get("images"):
            raise BadRequestError(f"{where}: images are not supported by this model",
                                  param=f"{where}.images")
        chat: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for j, call in enumerate(message["tool_calls"]):
                function = (call or {}).get("function") or {}
                if not isinstance(function.get("name"), str):
                    raise BadRequestError(f"{where}.tool_calls[{j}] needs function.name",
                                          param=f"{where}.tool_calls")
                call_id = f"call_{i}_{j}"
                call_ids[function["name"]] = call_id
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": function["name"],
                    "arguments": _arguments(function.get("arguments", {}),
                                            f"{where}.tool_calls[{j}]")}})
            chat["tool_calls"] = calls
        if role == "tool":
            name = message.get("tool_name") or message.get("name") or ""
            chat["tool_call_id"] = call_ids.get(name, name or f"call_{i}")
        out.append(chat)
    return out


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Ollama's tools are OpenAI's function tools already; only the type is checked."""
    if not tools:
        return None
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"),
                                                                       dict):
            raise BadRequestError(f"tools[{i}] must be a function tool", param=f"tools[{i}]")
    return [{"type": "function", "function": tool["function"]} for tool in tools]


def think_fields(think: bool | str | None) -> dict[str, Any]:
    """think: false drops the thinking and asks templates that know `enable_thinking` not to
    think; true (or an effort level) keeps it."""
    if think is None:
        return {}
    enabled = think is not False
    return {"include_reasoning": enabled, "chat_template_kwargs": {"enable_thinking": enabled}}
