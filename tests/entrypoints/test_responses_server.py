"""/v1/responses through a real `pagedllm serve` (tiny random Llama) and the official openai client:
the same greedy text as chat completions for the same conversation, the streamed event sequence
reassembling to the whole response, a forced tool call round trip, json_schema output, the store
(previous_response_id, GET, LRU bound), reasoning items, and bad requests as 400s."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.entrypoints.conftest import serve_module

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny"
STORE_SIZE = 2
GREEDY = dict(temperature=0, max_output_tokens=8, extra_body={"ignore_eos": True})
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                          "required": ["unit"], "additionalProperties": False}}
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 0,
                                                 "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(
        tiny_llama_dir, tmp_path_factory, "responses_server", "--kv-cache-memory", "16MiB",
        "--served-model-name", MODEL, "alias", "--enable-responses-api-store",
        "--responses-api-store-max-size", str(STORE_SIZE),
        "--structured-outputs-config", '{"disable_any_whitespace": true}')


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def chat_text(client, messages, max_tokens=8) -> tuple[str, int]:
    out = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                         max_tokens=max_tokens, extra_body={"ignore_eos": True})
    return out.choices[0].message.content, out.usage.prompt_tokens


def test_text_equals_chat_completions(client):
    response = client.responses.create(model=MODEL, input="What is a fox?",
                                       instructions="Be brief.", **GREEDY)
    text, prompt_tokens = chat_text(client, [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "What is a fox?"}])
    assert response.object == "response" and response.id.startswith("resp")
    assert response.output_text == text and text
    assert response.usage.input_tokens == prompt_tokens and response.usage.output_tokens == 8
    # ignore_eos with 8 tokens: cut by max_output_tokens
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    # message items with input_text parts, and an alias of the model name
    items = client.responses.create(model="alias", input=[
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is "}, {"type": "input_text", "text": "a fox?"}]}],
        instructions="Be brief.", **GREEDY)
    assert items.output_text == text and items.model == "alias"


def test_stream_event_sequence_reassembles_the_response(client):
    whole = client.responses.create(model=MODEL, input="Tell me a story.", **GREEDY)
    events = list(client.responses.create(model=MODEL, input="Tell me a story.", stream=True,
                                          **GREEDY))
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert types[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == whole.output_text
    assert events[-4].text == whole.output_text
    completed = events[-1].response
    assert completed.output_text == whole.output_text
    assert completed.usage.output_tokens == 8 and completed.status == "incomplete"
    # a streamed response is stored as it completed
    assert client.responses.retrieve(completed.id).model_dump() == completed.model_dump()


def test_tool_call_round_trip(client):
    first = client.responses.create(
        model=MODEL, input="What is the weather?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
        max_output_tokens=40)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # streamed: one function_call item whose argument deltas make the same arguments
    events = list(client.responses.create(
        model=MODEL, input="What is the weather?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
        max_output_tokens=40, stream=True))
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == call.arguments
    assert "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta") == call.arguments
    assert events[-1].response.output[0].name == "get_weather"
    # the round trip: the call and its output go back as input items
    follow_up = [{"role": "user", "content": "What is the weather?"},
                 {"type": "function_call", "call_id": call.call_id, "name": call.name,
                  "arguments": call.arguments},
                 {"type": "function_call_output", "call_id": call.call_id,
                  "output": json.dumps({"temperature": 21})}]
    second = client.responses.create(model=MODEL, input=follow_up, **GREEDY)
    text, prompt_tokens = chat_text(client, [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"temperature": 21}'}])
    assert second.output_text == text and second.usage.input_tokens == prompt_tokens


def test_required_tool_choice_returns_calls(client):
    response = client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER],
                                       tool_choice="required", temperature=0,
                                       max_output_tokens=60)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), WEATHER["parameters"])


def test_json_schema_output_parses(client):
    response = client.responses.create(
        model=MODEL, input="Answer in JSON.", temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA,
                         "strict": True}})
    jsonschema.validate(json.loads(response.output_text), SCHEMA)
    assert response.status == "completed"


def test_store_previous_response_id_get_and_lru(client):
    first = client.responses.create(model=MODEL, input="Hello there.", **GREEDY)
    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    second = client.responses.create(model=MODEL, input="And then?",
                                     previous_response_id=first.id, **GREEDY)
    text, prompt_tokens = chat_text(client, [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"}])
    assert second.output_text == text and second.usage.input_tokens == prompt_tokens
    assert second.previous_response_id == first.id
    # store=False: answered, not kept
    unstored = client.responses.create(model=MODEL, input="x", store=False, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    # bounded: STORE_SIZE newer responses push the first out
    for _ in range(STORE_SIZE):
        client.responses.create(model=MODEL, input="y", **GREEDY)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="z", previous_response_id=first.id)


BAD_RESPONSES = [
    ({"input": [{"type": "image_generation_call"}]}, "unsupported input item"),
    ({"input": [{"role": "robot", "content": "x"}]}, "role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "text parts"),
    ({"tools": [{"type": "web_search"}]}, "function tools"),
    ({"tool_choice": "required"}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "nope"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "schema"),
    ({"max_output_tokens": 100_000}, "maximum context length"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD_RESPONSES)
def test_bad_requests_are_400(http, fields, needle):
    response = http.post("/v1/responses", json={"model": MODEL, "input": "hi", **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and needle in error["message"], error


def test_unknown_ids_are_404_and_the_engine_keeps_serving(client, http):
    assert http.get("/v1/responses/resp-nope").status_code == 404
    assert http.post("/v1/responses", content=b"{not json").status_code == 400
    assert client.responses.create(model=MODEL, input="still there?", **GREEDY).output_text


@pytest.fixture(scope="module")
def thinking_server(shared_thinker_server):
    return shared_thinker_server


def test_reasoning_items_and_store_off(thinking_server):
    client = openai.OpenAI(base_url=f"{thinking_server.url}/v1", api_key="EMPTY", max_retries=0)
    chat = client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Why?"}], temperature=0,
        max_tokens=12, extra_body={"thinking_token_budget": 4})
    expected = chat.choices[0].message
    response = client.responses.create(model="thinker", input="Why?", temperature=0,
                                       max_output_tokens=12)
    free = client.chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Why?"}], temperature=0,
        max_tokens=12).choices[0].message
    reasoning = [item for item in response.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].content[0].text == free.reasoning
    assert response.output_text == (free.content or "")
    assert expected.reasoning  # the parser splits this model's output at all
    events = list(client.responses.create(model="thinker", input="Why?", temperature=0,
                                          max_output_tokens=12, stream=True))
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == free.reasoning
    # no --enable-responses-api-store: nothing is kept, previous_response_id is a 400
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError, match="enable-responses-api-store"):
        client.responses.create(model="thinker", input="x", previous_response_id=response.id)
