"""The Qwen2.5 / Hermes tool-calling family end to end: a tiny random Qwen2 served with a Qwen2.5-
style chat template (tools in the system prompt, `<tool_call>` blocks, `<tool_response>` turns)
and `--enable-auto-tool-choice --tool-call-parser hermes`. A random model cannot decide to call a
tool, so a regex constraint spells the text a Qwen model would write, and tool_choice "auto" must
parse it: one call, two parallel calls, and plain text."""

from __future__ import annotations

import json

import openai
import pytest

from tests.entrypoints.conftest import start_server

pytestmark = pytest.mark.timeout(300)

QWEN25_TOOLS_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}
{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == "user" or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != "tool" %}\
{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != "tool" %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
TOOLS = [WEATHER, TIME]
QUESTION = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]


def literal(text: str) -> str:
    """A regex matching exactly `text`."""
    return "".join("\\n" if c == "\n" else f"\\{c}" if c in "\\.^$*+?{}[]|()" else c
                   for c in text)


def hermes_call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


@pytest.fixture(scope="module")
def server(tiny_model_factory, tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen2_tools")
    template = directory / "qwen25_tools.jinja"
    template.write_text(QWEN25_TOOLS_TEMPLATE)
    # Room for the tool-laden system prompt (the tiny tokenizer spends many tokens on it).
    model = tiny_model_factory("Qwen2Config", max_position_embeddings=2048)
    remote = start_server(
        model, str(directory / "server.log"),
        "--kv-cache-memory", "16MiB", "--served-model-name", "qwen", "--chat-template",
        str(template), "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    try:
        yield remote
    finally:
        remote.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


def forced(client, text: str, stream: bool = False, messages=QUESTION):
    return client.chat.completions.create(
        model="qwen", messages=messages, tools=TOOLS, tool_choice="auto", temperature=0,
        max_tokens=200, stream=stream, extra_body={"structured_outputs": {"regex": literal(text)}})


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_the_prompt_carries_the_tools(server):
    import httpx

    body = {"messages": QUESTION, "tools": TOOLS, "return_token_strs": True}
    text = "".join(httpx.post(f"{server.url}/tokenize", json=body).json()["token_strs"])
    assert "<tools>" in text and '"name": "get_weather"' in text


def test_one_call(client):
    out = forced(client, hermes_call("get_weather", {"city": "Paris"}))
    choice = out.choices[0]
    assert calls_of(choice.message) == [("get_weather", {"city": "Paris"})]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert choice.message.tool_calls[0].id and choice.message.tool_calls[0].type == "function"


def test_two_parallel_calls(client):
    text = (hermes_call("get_weather", {"city": "Paris"}) + "\n"
            + hermes_call("get_time", {"timezone": "Asia/Tokyo"}))
    choice = forced(client, text).choices[0]
    assert calls_of(choice.message) == [("get_weather", {"city": "Paris"}),
                                        ("get_time", {"timezone": "Asia/Tokyo"})]
    assert choice.finish_reason == "tool_calls"
    assert len({c.id for c in choice.message.tool_calls}) == 2


def test_plain_text_is_content(client):
    choice = forced(client, "It is sunny in Paris.").choices[0]
    assert choice.message.content == "It is sunny in Paris." and not choice.message.tool_calls
    assert choice.finish_reason == "stop"


def test_streamed_calls_reassemble(client):
    text = (hermes_call("get_weather", {"city": "Paris"}) + "\n"
            + hermes_call("get_time", {"timezone": "Asia/Tokyo"}))
    whole = forced(client, text).choices[0].message
    calls: dict[int, list] = {}
    finish = None
    for chunk in forced(client, text, stream=True):
        if not chunk.choices:
            continue
        for piece in chunk.choices[0].delta.tool_calls or []:
            if piece.function and piece.function.name:
                calls[piece.index] = [piece.function.name, ""]
            if piece.function and piece.function.arguments:
                calls[piece.index][1] += piece.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert [tuple(calls[i]) for i in sorted(calls)] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert finish == "tool_calls"


def test_tool_round_trip_renders(client):
    first = forced(client, hermes_call("get_weather", {"city": "Paris"})).choices[0].message
    call = first.tool_calls[0]
    messages = [*QUESTION, {"role": "assistant", "content": None,
                            "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    answer = forced(client, "Sunny, 21 C.", messages=messages).choices[0]
    assert answer.message.content == "Sunny, 21 C." and answer.finish_reason == "stop"
