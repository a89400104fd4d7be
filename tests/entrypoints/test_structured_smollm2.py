"""Structured outputs and tool calls with the real SmolLM2 through `pagedllm serve` and the official
openai client: whatever the model would have written, the grammar makes the output parse (JSON that
validates against its schema, regexes that fullmatch, one of the choices, a grammar's language,
tool calls whose arguments validate), and unconstrained requests batched with constrained ones keep
their solo greedy output. One server for the module; requests run concurrently to stay fast."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest

from tests.entrypoints.conftest import serve_module

pytestmark = [pytest.mark.gguf, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 96


@pytest.fixture(scope="module")
def smollm2_server(smollm2_gguf_path, tmp_path_factory):
    # Compact JSON (no optional whitespace) keeps outputs short; the server default applies to
    # every constrained request.
    yield from serve_module(MODEL, tmp_path_factory, "smollm2_structured",
                            "--kv-cache-memory", "128MiB", "--max-model-len", "1024",
                            "--max-num-seqs", "64",
                            "--structured-outputs-config", '{"disable_any_whitespace": true}')


@pytest.fixture(scope="module")
def client(smollm2_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def aclient(smollm2_server):
    """run(fn): asyncio.run of fn(an AsyncOpenAI client made in that event loop)."""

    def run(fn):
        async def main():
            async with openai.AsyncOpenAI(base_url=f"{smollm2_server.url}/v1", api_key="EMPTY",
                                          max_retries=0, timeout=300) as c:
                return await fn(c)

        return asyncio.run(main())

    return run


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def name(n: int) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": n}


SCHEMAS = [
    ("a person", {"type": "object", "properties": {"name": name(12), "age": {
        "type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}),
    ("a yes/no answer", {"type": "object", "properties": {"answer": {"type": "boolean"}},
                         "required": ["answer"]}),
    ("a colour", {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
                  "required": ["colour"]}),
    ("three fruits", {"type": "object", "properties": {"fruits": {
        "type": "array", "items": name(10), "minItems": 3, "maxItems": 3}},
        "required": ["fruits"]}),
    ("a city and its country", {"type": "object", "properties": {
        "city": name(15), "country": name(15)}, "required": ["city", "country"],
        "additionalProperties": False}),
    ("a point", {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9,
                                                        "maximum": 9},
                                                  "y": {"type": "integer", "minimum": -9,
                                                        "maximum": 9}},
                 "required": ["x", "y"]}),
    ("a book", {"type": "object", "properties": {"title": name(20), "author": {
        "type": "object", "properties": {"first": name(10), "last": name(10)},
        "required": ["first", "last"]}}, "required": ["title", "author"]}),
    ("a phone number", {"type": "object", "properties": {"phone": {
        "type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}, "required": ["phone"]}),
    ("a list of up to two numbers", {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                "maximum": 99},
                                     "minItems": 1, "maxItems": 2}),
    ("a status", {"type": "object", "properties": {"status": {"enum": ["ok", "error"]},
                                                   "code": {"type": "integer", "minimum": 100,
                                                            "maximum": 599}},
                  "required": ["status", "code"]}),
    ("a pet", {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
                                                "name": name(8), "vaccinated": {
                                                    "type": "boolean"}},
               "required": ["kind", "name", "vaccinated"]}),
    ("a rating", {"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1,
                                                             "maximum": 5},
                                                   "comment": name(20)},
                  "required": ["stars"]}),
    ("a word", {"type": "string", "minLength": 1, "maxLength": 12}),
    ("a number", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ("coordinates", {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}],
                     "items": False, "minItems": 2, "maxItems": 2}),
    ("a task", {"type": "object", "properties": {"title": name(15), "done": {"type": "boolean"},
                                                 "tags": {"type": "array", "items": {
                                                     "enum": ["work", "home", "fun"]},
                                                     "maxItems": 2}},
                "required": ["title", "done", "tags"]}),
    ("a date", {"type": "object", "properties": {"date": {
        "type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}}, "required": ["date"]}),
    ("an optional nickname", {"type": "object", "properties": {"nickname": name(10)},
                              "additionalProperties": False}),
    ("a matrix", {"type": "object", "properties": {"rows": {
        "type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "array", "minItems": 2, "maxItems": 2, "items": {
                "type": "integer", "minimum": 0, "maximum": 9}}}}, "required": ["rows"]}),
    ("a weather report", {"type": "object", "properties": {
        "sky": {"enum": ["sunny", "cloudy", "rainy"]}, "temp": {
            "type": "integer", "minimum": -40, "maximum": 50}, "windy": {"type": "boolean"}},
        "required": ["sky", "temp", "windy"]}),
]


def test_twenty_json_schemas_validate(aclient):
    async def one(c, what: str, schema: dict):
        out = await c.chat.completions.create(
            model=MODEL, messages=ask(f"Give me {what} as JSON."), temperature=0,
            max_tokens=MAX_TOKENS, response_format={
                "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
        return out.choices[0]

    async def all_(c):
        return await asyncio.gather(*(one(c, w, s) for w, s in SCHEMAS))

    for (what, schema), choice in zip(SCHEMAS, aclient(all_)):
        assert choice.finish_reason == "stop", (what, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_and_legacy_guided_json(client):
    # A prompt with a short answer: free JSON strings let this model loop to max_tokens.
    out = client.chat.completions.create(model=MODEL, messages=ask(
        'Repeat this JSON exactly: {"ok": true, "n": 3}'),
                                         temperature=0, max_tokens=MAX_TOKENS,
                                         response_format={"type": "json_object"})
    assert out.choices[0].finish_reason == "stop", out.choices[0].message.content
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    schema = SCHEMAS[0][1]
    legacy = client.completions.create(model=MODEL, prompt="A person as JSON: ", temperature=0,
                                       max_tokens=MAX_TOKENS, extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(legacy.choices[0].text), schema)


# Bounded repetitions: an unbounded `[a-z]+` lets the model run on to max_tokens (a cut output).
REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[A-Z][a-z]{2,8}", r"\d{1,4}\.\d{2}",
           r"[a-z]{1,8}@[a-z]{1,8}\.com"]


def test_regexes_fullmatch_on_both_endpoints(aclient):
    async def one(c, pattern: str, chat: bool):
        extra = {"structured_outputs": {"regex": pattern}}
        if chat:
            out = await c.chat.completions.create(
                model=MODEL, messages=ask("Answer:"), temperature=0, max_tokens=32,
                extra_body=extra)
            return out.choices[0].message.content
        out = await c.completions.create(model=MODEL, prompt="My answer is ",
                                               temperature=0, max_tokens=32,
                                               extra_body={"guided_regex": pattern})
        return out.choices[0].text

    async def all_(c):
        return await asyncio.gather(*(one(c, p, chat) for p in REGEXES for chat in (True, False)))

    texts = aclient(all_)
    for (pattern, _), text in zip([(p, c) for p in REGEXES for c in (True, False)], texts):
        assert re.fullmatch(pattern, text), (pattern, text)


def test_choice_and_ebnf_grammar(client):
    choices = ["Paris", "London", "Berlin"]
    out = client.chat.completions.create(
        model=MODEL, messages=ask("What is the capital of France?"), temperature=0,
        max_tokens=8, extra_body={"structured_outputs": {"choice": choices}})
    assert out.choices[0].message.content in choices
    grammar = ('root ::= greeting " " name "!"\n'
               'greeting ::= "Hello" | "Hi"\n'
               'name ::= [A-Z] [a-z]+')
    out = client.completions.create(model=MODEL, prompt="Greet someone: ", temperature=0,
                                    max_tokens=16, extra_body={"guided_grammar": grammar})
    assert re.fullmatch(r"(Hello|Hi) [A-Z][a-z]+!", out.choices[0].text), out.choices[0].text


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string",
                                                                 "maxLength": 20}},
                   "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = ask("What is the weather like in Paris?")


def check_calls(message) -> list[tuple[str, dict]]:
    assert message.tool_calls, message
    calls = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMA_OF[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def test_named_and_required_tool_calls(client):
    named = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=MAX_TOKENS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].finish_reason == "tool_calls"
    assert [n for n, _ in check_calls(named.choices[0].message)] == ["get_weather"]
    required = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=MAX_TOKENS,
        tool_choice="required", parallel_tool_calls=False)
    assert required.choices[0].finish_reason == "tool_calls"
    assert len(check_calls(required.choices[0].message)) == 1


def stream_calls(client, **kwargs) -> tuple[list[tuple[str, str]], str]:
    calls: dict[int, list] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for piece in choice.delta.tool_calls or []:
            if piece.function and piece.function.name:
                assert piece.id and piece.index not in calls
                calls[piece.index] = [piece.function.name, ""]
            if piece.function and piece.function.arguments:
                calls[piece.index][1] += piece.function.arguments
        finish = choice.finish_reason or finish
    return [tuple(calls[i]) for i in sorted(calls)], finish


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "get_time"}}, "required"])
def test_streamed_tool_call_deltas_reassemble_to_the_same_call(client, tool_choice):
    kwargs = dict(model=MODEL, messages=ask("What time is it in Tokyo?"), tools=TOOLS,
                  tool_choice=tool_choice, temperature=0, max_tokens=MAX_TOKENS)
    whole = client.chat.completions.create(**kwargs).choices[0].message
    streamed, finish = stream_calls(client, **kwargs)
    assert streamed == [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert finish == "tool_calls"


def test_tool_round_trip(client):
    first = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=MAX_TOKENS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [*QUESTION,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id,
                 "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                           tool_choice="none", temperature=0, max_tokens=48)
    answer = final.choices[0].message
    assert not answer.tool_calls and answer.content and final.choices[0].finish_reason in (
        "stop", "length")


def test_batch_of_32_mixed_requests_keeps_free_outputs(aclient):
    prompts = [f"Tell me a fact about the number {i}." for i in range(16)]

    async def free(c, i: int):
        out = await c.chat.completions.create(model=MODEL, messages=ask(prompts[i]),
                                                    temperature=0, max_tokens=24)
        return out.choices[0].message.content

    async def constrained(c, i: int):
        what, schema = SCHEMAS[i % len(SCHEMAS)]
        out = await c.chat.completions.create(
            model=MODEL, messages=ask(f"Give me {what} as JSON."), temperature=0,
            max_tokens=MAX_TOKENS, extra_body={"guided_json": schema})
        return schema, out.choices[0].message.content

    async def solo(c):
        return [await free(c, i) for i in range(len(prompts))]

    async def mixed(c):
        return await asyncio.gather(*(free(c, i) for i in range(16)),
                                    *(constrained(c, i) for i in range(16)))

    alone = aclient(solo)
    together = aclient(mixed)
    assert together[:16] == alone
    for schema, text in together[16:]:
        jsonschema.validate(json.loads(text), schema)
