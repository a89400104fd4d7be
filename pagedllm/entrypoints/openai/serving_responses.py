"""/v1/responses: a Responses request -> a chat request (protocol_responses.py) -> the chat path
(template, sampling, structured outputs, tool and reasoning parsers) -> output items (reasoning,
message, function_call), whole or as the Responses event sequence; stored when asked and enabled.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from pagedllm.entrypoints.openai.chat_output import ChoiceStream
from pagedllm.entrypoints.openai.errors import BadRequestError, NotFoundError, OpenAIError
from pagedllm.entrypoints.openai.protocol import ChatMessage
from pagedllm.entrypoints.openai.protocol_base import random_id
from pagedllm.entrypoints.openai.protocol_responses import (
    ResponsesRequest,
    chat_fields,
    input_messages,
)
from pagedllm.entrypoints.openai.responses_store import ResponseStore, StoredResponse
from pagedllm.entrypoints.openai.serving_chat import (
    ChatRun,
    OpenAIServingChat,
    chat_request,
    final_output,
)

STORE_DISABLED = ("previous_response_id needs the response store: start the server with "
                  "--enable-responses-api-store")


def _usage(num_prompt_tokens: int, num_output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": num_prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": num_output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": num_prompt_tokens + num_output_tokens}


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """The response's status and incomplete_details: cut by max_output_tokens, or completed."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def _reasoning_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": random_id("rs"), "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": random_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [_text_part(text)]}


def _call_item(call_id: str, name: str, arguments: str,
               status: str = "completed") -> dict[str, Any]:
    return {"id": random_id("fc"), "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_items(message: ChatMessage) -> list[dict[str, Any]]:
    """A chat answer -> Responses output items: thinking, then text, then calls."""
    items = []
    if message.reasoning:
        items.append(_reasoning_item(message.reasoning))
    if message.content:
        items.append(_message_item(message.content))
    items.extend(_call_item(c.id, c.function.name, c.function.arguments)
                 for c in message.tool_calls)
    return items


def output_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items -> the chat messages a follow-up request continues from."""
    as_input = []
    for item in items:
        if item["type"] == "message":
            as_input.append({"type": "message", "role": "assistant",
                             "content": item["content"]})
        elif item["type"] == "function_call":
            as_input.append({k: item[k] for k in ("type", "call_id", "name", "arguments")})
    return input_messages(as_input) if as_input else []


class OpenAIServingResponses:
    def __init__(self, chat: OpenAIServingChat, store: ResponseStore | None) -> None:
        self.chat = chat
        self.store = store

    def retrieve(self, response_id: str) -> dict[str, Any]:
        stored = self.store.get(response_id) if self.store is not None else None
        if stored is None:
            raise NotFoundError(f"Response with id '{response_id}' not found.",
                                param="response_id")
        return stored.response

    async def create_response(self, request: ResponsesRequest
                              ) -> dict[str, Any] | AsyncIterator[str]:
        history = self._history(request.previous_response_id)
        chat = chat_request(chat_fields(request, history, request.stream))
        if chat.n != 1:
            raise BadRequestError("n must be 1", param="n")
        response_id = random_id("resp")
        run = self.chat.start(chat, response_id)
        # What a follow-up continues: this turn's messages without the instructions.
        turn = [*history, *input_messages(request.input)]
        base = self._base(request, response_id, run.model_name)
        if request.stream:
            return self._stream(request, run, base, turn)
        final = await final_output(run.stream)
        completion = final.outputs[0]
        message, _ = run.options.message(completion.text, self.chat.tokenizer)
        status, incomplete = _status(completion.finish_reason)
        response = {**base, "status": status, "incomplete_details": incomplete,
                    "output": output_items(message),
                    "usage": _usage(run.num_prompt_tokens, len(completion.token_ids))}
        self._save(request, response, turn)
        return response

    def _history(self, previous_response_id: str | None) -> list[dict[str, Any]]:
        if previous_response_id is None:
            return []
        if self.store is None:
            raise BadRequestError(STORE_DISABLED, param="previous_response_id")
        stored = self.store.get(previous_response_id)
        if stored is None:
            raise NotFoundError(f"Response with id '{previous_response_id}' not found.",
                                param="previous_response_id")
        return list(stored.messages)

    def _save(self, request: ResponsesRequest, response: dict[str, Any],
              turn: list[dict[str, Any]]) -> None:
        if self.store is None or not request.store:
            return
        messages = [*turn, *output_messages(response["output"])]
        self.store.put(response["id"], StoredResponse(response, messages))

    def _base(self, request: ResponsesRequest, response_id: str,
              model_name: str) -> dict[str, Any]:
        """The response object's fields that do not depend on the output."""
        return {
            "id": response_id, "object": "response", "created_at": int(time.time()),
            "model": model_name, "status": "in_progress", "output": [], "error": None,
            "incomplete_details": None, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {}, "parallel_tool_calls": request.parallel_tool_calls,
            "previous_response_id": request.previous_response_id,
            "reasoning": request.reasoning,
            "store": bool(request.store and self.store is not None),
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "text": request.text or {"format": {"type": "text"}},
            "tool_choice": request.tool_choice or ("auto" if request.tools else "none"),
            "tools": request.tools or [], "truncation": "disabled", "usage": None,
            "user": request.user,
        }

    async def _stream(self, request: ResponsesRequest, run: ChatRun, base: dict[str, Any],
                      turn: list[dict[str, Any]]) -> AsyncIterator[str]:
        events = _EventStream()
        yield events.emit("response.created", response=base)
        yield events.emit("response.in_progress", response=base)
        choice = ChoiceStream(run.options, self.chat.tokenizer)
        num_output_tokens, finish = 0, None
        try:
            async with aclosing(run.stream):  # type: ignore[type-var]
                async for output in run.stream:
                    completion = output.outputs[0]
                    num_output_tokens += len(completion.token_ids)
                    finish = completion.finish_reason
                    delta = choice.step(completion.text, completion.token_ids,
                                        final=finish is not None)
                    if delta is None:
                        continue
                    if delta.reasoning:
                        for event in events.reasoning(delta.reasoning):
                            yield event
                    if delta.content:
                        for event in events.text(delta.content):
                            yield event
                    for call in delta.tool_calls or []:
                        function = call.function
                        for event in events.call(call.id, function.name if function else None,
                                                 function.arguments if function else None):
                            yield event
            for event in events.close_item():
                yield event
        except OpenAIError as e:
            yield events.emit("error", code=e.code or e.type, message=e.message, param=e.param)
            return
        status, incomplete = _status(finish)
        response = {**base, "status": status, "incomplete_details": incomplete,
                    "output": events.items, "usage": _usage(run.num_prompt_tokens,
                                                            num_output_tokens)}
        self._save(request, response, turn)
        yield events.emit("response.completed", response=response)


class _EventStream:
    """The Responses event sequence: one output item open at a time (reasoning, message or
    function call); a delta of another kind closes it and opens the next."""

    def __init__(self) -> None:
        self.sequence_number = 0
        self.items: list[dict[str, Any]] = []
        """The finished output items."""
        self.current: dict[str, Any] | None = None

    def emit(self, type_: str, **fields: Any) -> str:
        data = {"type": type_, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {type_}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    @property
    def output_index(self) -> int:
        return len(self.items)

    def _open(self, item: dict[str, Any]) -> list[str]:
        events = self.close_item()
        self.current = item
        events.append(self.emit("response.output_item.added", output_index=self.output_index,
                                item=item))
        return events

    def reasoning(self, delta: str) -> list[str]:
        events = []
        if self.current is None or self.current["type"] != "reasoning":
            item = _reasoning_item("", "in_progress")
            item["content"] = []
            events += self._open(item)
            item["text"] = ""
        assert self.current is not None
        self.current["text"] += delta
        events.append(self.emit("response.reasoning_text.delta", item_id=self.current["id"],
                                output_index=self.output_index, content_index=0, delta=delta))
        return events

    def text(self, delta: str) -> list[str]:
        events = []
        if self.current is None or self.current["type"] != "message":
            item = _message_item("", "in_progress")
            item["content"] = []
            events += self._open(item)
            events.append(self.emit("response.content_part.added", item_id=item["id"],
                                    output_index=self.output_index, content_index=0,
                                    part=_text_part("")))
            item["text"] = ""
        assert self.current is not None
        self.current["text"] += delta
        events.append(self.emit("response.output_text.delta", item_id=self.current["id"],
                                output_index=self.output_index, content_index=0, delta=delta,
                                logprobs=[]))
        return events

    def call(self, call_id: str | None, name: str | None, arguments: str | None) -> list[str]:
        """One tool-call delta: an id starts a new call (chat's streaming shape)."""
        events = []
        if call_id is not None or self.current is None or \
                self.current["type"] != "function_call":
            events += self._open(_call_item(call_id or random_id("call"), name or "", "",
                                            "in_progress"))
        assert self.current is not None
        if name and not self.current["name"]:
            self.current["name"] = name
        if arguments:
            self.current["arguments"] += arguments
            events.append(self.emit("response.function_call_arguments.delta",
                                    item_id=self.current["id"], output_index=self.output_index,
                                    delta=arguments))
        return events

    def close_item(self) -> list[str]:
        """The done events of the open item (none open: nothing)."""
        item, self.current = self.current, None
        if item is None:
            return []
        index, events = self.output_index, []
        if item["type"] == "reasoning":
            text = item.pop("text")
            events.append(self.emit("response.reasoning_text.done", item_id=item["id"],
                                    output_index=index, content_index=0, text=text))
            item["content"] = [{"type": "reasoning_text", "text": text}]
        elif item["type"] == "message":
            text = item.pop("text")
            part = _text_part(text)
            events.append(self.emit("response.output_text.done", item_id=item["id"],
                                    output_index=index, content_index=0, text=text,
                                    logprobs=[]))
            events.append(self.emit("response.content_part.done", item_id=item["id"],
                                    output_index=index, content_index=0, part=part))
            item["content"] = [part]
        else:
            events.append(self.emit("response.function_call_arguments.done", item_id=item["id"],
                                    output_index=index, name=item["name"],
                                    arguments=item["arguments"]))
        item["status"] = "completed"
        events.append(self.emit("response.output_item.done", output_index=index, item=item))
        self.items.append(item)
        return events
