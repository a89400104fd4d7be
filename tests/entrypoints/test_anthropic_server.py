"""Anthropic's /v1/messages and /v1/messages/count_tokens through a real `pagedllm serve` (tiny
random Llama, API key on) and the official anthropic client: the same greedy text as chat
completions for the same conversation, stop sequences, the event stream reassembled by the
client's own accumulator, a forced tool_use round trip, token counts, and errors in Anthropic's
shape."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.entrypoints.conftest import serve_module

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny"
KEY = "anthropic-test-key"
SYSTEM = "Be brief."
USER = [{"role": "user", "content": "What is a fox?"}]
WEATHER = {"name": "get_weather", "description": "the weather in a city",
           "input_schema": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                            "required": ["unit"], "additionalProperties": False}}
FORCED = {"type": "tool", "name": "get_weather"}
# anthropic 2.x types no sampling arguments (newer Claude models take none); the API still has
# them, so they go in the body.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(
        tiny_llama_dir, tmp_path_factory, "anthropic_server", "--kv-cache-memory", "16MiB",
        "--served-model-name", MODEL, "--api-key", KEY,
        "--structured-outputs-config", '{"disable_any_whitespace": true}')


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def chat(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"x-api-key": KEY}) as c:
        yield c


def chat_answer(chat, messages, max_tokens=8, **kwargs):
    out = chat.chat.completions.create(model=MODEL, messages=messages, **GREEDY,
                                       max_tokens=max_tokens, **kwargs)
    return out.choices[0], out.usage.prompt_tokens


def text_of(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_text_equals_chat_completions(client, chat):
    message = client.messages.create(model=MODEL, system=SYSTEM, messages=USER, max_tokens=8,
                                     **GREEDY)
    choice, prompt_tokens = chat_answer(chat, [{"role": "system", "content": SYSTEM}, *USER])
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert text_of(message) == choice.message.content
    assert message.usage.input_tokens == prompt_tokens
    expected_stop = {"length": "max_tokens", "stop": "end_turn"}[choice.finish_reason]
    assert message.stop_reason == expected_stop
    # system as text blocks, content as text blocks; top_k=1 samples the greedy token
    blocks = client.messages.create(
        model=MODEL, system=[{"type": "text", "text": SYSTEM}], max_tokens=8,
        extra_body={"temperature": 1.0, "top_k": 1, "top_p": 0.9},
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is a fox?"}]}])
    assert text_of(blocks) == choice.message.content
    count = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=USER)
    assert count.input_tokens == prompt_tokens


def test_stop_sequences(client):
    free = text_of(client.messages.create(model=MODEL, messages=USER, max_tokens=24,
                                          **GREEDY))
    assert len(free) > 8, free
    stop = free[4:7]
    cut = client.messages.create(model=MODEL, messages=USER, max_tokens=24, **GREEDY,
                                 stop_sequences=[stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert text_of(cut) == free[:free.index(stop)]


def test_stream_events_and_accumulator(client):
    whole = client.messages.create(model=MODEL, system=SYSTEM, messages=USER, max_tokens=8,
                                   **GREEDY)
    events = list(client.messages.create(model=MODEL, system=SYSTEM, messages=USER,
                                         max_tokens=8, **GREEDY, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(types[2:-3]) == {"content_block_delta"}
    assert events[0].message.usage.input_tokens == whole.usage.input_tokens
    assert events[-2].delta.stop_reason == whole.stop_reason
    assert events[-2].usage.output_tokens == whole.usage.output_tokens
    with client.messages.stream(model=MODEL, system=SYSTEM, messages=USER, max_tokens=8,
                                **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == text_of(whole) == text_of(final)
    assert final.stop_reason == whole.stop_reason


def test_tool_use_round_trip(client, chat):
    message = client.messages.create(model=MODEL, messages=USER, max_tokens=40, **GREEDY,
                                     tools=[WEATHER], tool_choice=FORCED)
    [call] = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and message.stop_reason == "tool_use"
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(model=MODEL, messages=USER, max_tokens=40, **GREEDY,
                                tools=[WEATHER], tool_choice=FORCED) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == call.input and final.stop_reason == "tool_use"
    # the call and its result go back; the answer is what chat gives the same conversation
    history = [*USER,
               {"role": "assistant", "content": [{"type": "tool_use", "id": call.id,
                                                  "name": call.name, "input": call.input}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": "21 degrees"}]}]
    answer = client.messages.create(model=MODEL, messages=history, max_tokens=8, **GREEDY)
    choice, prompt_tokens = chat_answer(chat, [
        *USER, {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.input)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"}])
    assert text_of(answer) == choice.message.content
    assert answer.usage.input_tokens == prompt_tokens
    # "any" forces at least one call
    anything = client.messages.create(model=MODEL, messages=USER, max_tokens=60, **GREEDY,
                                      tools=[WEATHER], tool_choice={"type": "any"})
    assert [b.name for b in anything.content if b.type == "tool_use"]


def anthropic_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]


BAD = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"temperature": -1}, "temperature"),
    ({"tool_choice": {"type": "magic"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
    ({"max_tokens": 100_000}, "maximum context length"),
    ({"stop_sequences": [""]}, "stop"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD)
def test_bad_requests_are_400_in_anthropic_shape(http, fields, needle):
    body = {"model": MODEL, "max_tokens": 8, "messages": USER, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    error = anthropic_error(http.post("/v1/messages", json=body), 400)
    assert error["type"] == "invalid_request_error" and needle in error["message"], error


def test_client_errors_and_the_engine_keeps_serving(server, client, http):
    error = anthropic_error(http.post("/v1/messages", content=b"{nope",
                                      headers={"content-type": "application/json"}), 400)
    assert "JSON" in error["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="other", messages=USER, max_tokens=4)
    bad_key = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad_key.messages.create(model=MODEL, messages=USER, max_tokens=4)
    assert info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model=MODEL, messages=[])
    assert text_of(client.messages.create(model=MODEL, messages=USER, max_tokens=4,
                                          **GREEDY)) is not None
