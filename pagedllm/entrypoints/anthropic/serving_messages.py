"""/v1/messages and /v1/messages/count_tokens: an Anthropic request -> a chat request
(protocol.py) -> the chat path -> content blocks (thinking, text, tool_use), whole or as
Anthropic's event stream (message_start, content_block_start/delta/stop, message_delta,
message_stop)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pagedllm.entrypoints.anthropic.protocol import (
    AnthropicCountTokensRequest,
    AnthropicMessagesRequest,
    anthropic_error_body,
    chat_fields,
)
from pagedllm.entrypoints.openai.chat_output import ChoiceStream
from pagedllm.entrypoints.openai.errors import BadRequestError, OpenAIError
from pagedllm.entrypoints.openai.protocol import ChatMessage
from pagedllm.entrypoints.openai.protocol_base import random_id
from pagedllm.entrypoints.openai.serving_chat import (
    ChatRun,
    OpenAIServingChat,
    chat_request,
    final_output,
)


def stop_reason(finish_reason: str | None, stop: int | str | None,
                tools_called: bool) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) in Anthropic's words."""
    if finish_reason == "length":
        return "max_tokens", None
    if tools_called:
        return "tool_use", None
    if isinstance(stop, str):
        return "stop_sequence", stop
    return ("end_turn" if finish_reason else None), None


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the input object (a model's malformed JSON: kept as text)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def content_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.reasoning:
        blocks.append({"type": "thinking", "thinking": message.reasoning, "signature": ""})
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    blocks.extend({"type": "tool_use", "id": c.id, "name": c.function.name,
                   "input": _tool_input(c.function.arguments)} for c in message.tool_calls)
    return blocks


class AnthropicServingMessages:
    def __init__(self, chat: OpenAIServingChat) -> None:
        self.chat = chat

    async def count_tokens(self, request: AnthropicCountTokensRequest) -> dict[str, Any]:
        chat = chat_request(chat_fields(request))
        self.chat.models.check_model(chat.model)
        prompt_ids = self.chat.render_prompt(
            chat.conversation(), None, True, False, chat.add_special_tokens,
            self.chat.prompt_tools(chat), chat.chat_template_kwargs)
        return {"input_tokens": len(prompt_ids)}

    async def create_message(self, request: AnthropicMessagesRequest
                             ) -> dict[str, Any] | AsyncIterator[str]:
        chat = chat_request(chat_fields(request))
        if chat.n != 1:
            raise BadRequestError("n must be 1", param="n")
        message_id = random_id("msg")
        run = self.chat.start(chat, message_id)
        if request.stream:
            return self._stream(run)
        final = await final_output(run.stream)
        completion = final.outputs[0]
        message, tools_called = run.options.message(completion.text, self.chat.tokenizer)
        reason, sequence = stop_reason(completion.finish_reason, completion.stop_reason,
                                       tools_called)
        return {"id": message_id, "type": "message", "role": "assistant",
                "model": run.model_name, "content": content_blocks(message),
                "stop_reason": reason, "stop_sequence": sequence,
                "usage": {"input_tokens": run.num_prompt_tokens,
                          "output_tokens": len(completion.token_ids)}}

    async def _stream(self, run: ChatRun) -> AsyncIterator[str]:
        blocks = _BlockStream()
        yield _event("message_start", message={
            "id": run.request_id, "type": "message", "role": "assistant",
            "model": run.model_name, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": run.num_prompt_tokens, "output_tokens": 0}})
        choice = ChoiceStream(run.options, self.chat.tokenizer)
        num_output_tokens, finish, stop = 0, None, None
        try:
            async with aclosing(run.stream):  # type: ignore[type-var]
                async for output in run.stream:
                    completion = output.outputs[0]
                    num_output_tokens += len(completion.token_ids)
                    finish, stop = completion.finish_reason, completion.stop_reason
                    delta = choice.step(completion.text, completion.token_ids,
                                        final=finish is not None)
                    if delta is None:
                        continue
                    if delta.reasoning:
                        for event in blocks.delta("thinking", delta.reasoning):
                            yield event
                    if delta.content:
                        for event in blocks.delta("text", delta.content):
                            yield event
                    for call in delta.tool_calls or []:
                        function = call.function
                        for event in blocks.tool_delta(
                                call.id, function.name if function else None,
                                function.arguments if function else None):
                            yield event
            for event in blocks.close():
                yield event
        except OpenAIError as e:
            yield _event("error", error=anthropic_error_body(e.status_code, e.message)["error"])
            return
        reason, sequence = stop_reason(finish, stop, choice.tools_called)
        yield _event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                     usage={"output_tokens": num_output_tokens})
        yield _event("message_stop")


def _event(type_: str, **fields: Any) -> str:
    data = json.dumps({"type": type_, **fields}, ensure_ascii=False)
    return f"event: {type_}\ndata: {data}\n\n"


class _BlockStream:
    """Content blocks as events: one open at a time; a delta of another kind (or a new tool
    call) stops it and starts the next at the following index."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None

    def _start(self, block: dict[str, Any]) -> list[str]:
        events = self.close()
        self.index += 1
        self.kind = block["type"]
        events.append(_event("content_block_start", index=self.index, content_block=block))
        return events

    def delta(self, kind: str, text: str) -> list[str]:
        events = []
        if self.kind != kind:
            start = ({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                     else {"type": "text", "text": ""})
            events += self._start(start)
        delta = ({"type": "thinking_delta", "thinking": text} if kind == "thinking"
                 else {"type": "text_delta", "text": text})
        events.append(_event("content_block_delta", index=self.index, delta=delta))
        return events

    def tool_delta(self, call_id: str | None, name: str | None,
                   arguments: str | None) -> list[str]:
        events = []
        if call_id is not None or self.kind != "tool_use":
            events += self._start({"type": "tool_use", "id": call_id or random_id("toolu"),
                                   "name": name or "", "input": {}})
        if arguments:
            events.append(_event("content_block_delta", index=self.index, delta={
                "type": "input_json_delta", "partial_json": arguments}))
        return events

    def close(self) -> list[str]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event("content_block_stop", index=self.index)]
