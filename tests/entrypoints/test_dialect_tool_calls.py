"""Tool calls in every dialect's shape, from a scripted model answer (the engine stream replaced
by outputs that write Hermes-style calls, which a random model never does; the hermes parser, the
chat path's ChoiceStream and each dialect's formatting are the real ones): whole and streamed
answers carry the same calls, with the arguments as each dialect wants them."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from pagedllm.entrypoints.anthropic.serving_messages import AnthropicServingMessages
from pagedllm.entrypoints.ollama.serving import OllamaServing
from pagedllm.entrypoints.openai.chat_output import OutputOptions
from pagedllm.entrypoints.openai.chat_tools import ToolMode
from pagedllm.entrypoints.openai.protocol_responses import ResponsesRequest
from pagedllm.entrypoints.openai.serving_chat import ChatRun
from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS
from pagedllm.outputs import CompletionOutput, RequestOutput

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
CALLS = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Île de Ré"})]
TEXT = "Let me look.\n" + "".join(
    "<tool_call>\n" + json.dumps({"name": n, "arguments": a}) + "\n</tool_call>\n"
    for n, a in CALLS)
CHAT = SimpleNamespace(tokenizer=None)


def run(stream: bool) -> ChatRun:
    """The scripted answer: whole (FINAL_ONLY) or in 7-character deltas."""
    pieces = [TEXT[i:i + 7] for i in range(0, len(TEXT), 7)] if stream else [TEXT]

    async def outputs():
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield RequestOutput("r", None, [1, 2, 3], [CompletionOutput(
                0, piece, [7] * len(piece), finish_reason="stop" if last else None)],
                finished=last)

    mode = ToolMode("auto", TOOLS, parser_cls=TOOL_PARSERS.get("hermes"))
    return ChatRun("r", "m", [1, 2, 3], outputs(), OutputOptions(mode, None))


def collect(stream) -> list[str]:
    async def main():
        return [item async for item in stream]

    return asyncio.run(main())


def sse_data(events: list[str]) -> list[dict]:
    return [json.loads(e.split("data: ", 1)[1]) for e in events]


def test_responses_function_call_items():
    serving = OpenAIServingResponses(CHAT, None)
    request = ResponsesRequest(input="weather?", tools=[{"type": "function",
                                                         "name": "get_weather"}])
    events = sse_data(collect(serving._stream(request, run(True), {"id": "resp"}, [])))
    items = events[-1]["response"]["output"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call"]
    assert items[0]["content"][0]["text"] == "Let me look.\n"
    assert [(i["name"], json.loads(i["arguments"])) for i in items[1:]] == CALLS
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [json.loads(e["arguments"]) for e in done] == [a for _, a in CALLS]
    for item in items[1:]:
        deltas = "".join(e["delta"] for e in events
                         if e["type"] == "response.function_call_arguments.delta"
                         and e["item_id"] == item["id"])
        assert deltas == item["arguments"]
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]


def test_anthropic_tool_use_blocks():
    serving = AnthropicServingMessages(CHAT)
    events = sse_data(collect(serving._stream(run(True))))
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    inputs = {}
    for e in events:
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta":
            inputs[e["index"]] = inputs.get(e["index"], "") + e["delta"]["partial_json"]
    assert [json.loads(inputs[i]) for i in (1, 2)] == [a for _, a in CALLS]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_ollama_tool_calls_whole_and_streamed():
    serving = OllamaServing.__new__(OllamaServing)
    serving.chat = CHAT
    whole = asyncio.run(serving._answer(run(False), "m", stream=False, chat=True))
    expected = [{"function": {"name": n, "arguments": a}} for n, a in CALLS]
    assert whole["message"]["tool_calls"] == expected
    assert whole["message"]["content"] == "Let me look.\n"
    lines = [json.loads(line) for line in collect(serving._stream(run(True), "m", chat=True))]
    assert lines[-1]["done"] and lines[-1]["message"]["tool_calls"] == expected
    assert "".join(line["message"]["content"] for line in lines) == "Let me look.\n"
