"""Structured outputs, tools and reasoning through a real `pagedllm serve` (tiny random Llama):
every malformed request is a 400 in OpenAI's shape, the accepted ones are 200 with the tool-call
shape, and the prompt gets the tools and chat_template_kwargs. What the grammar makes of the output
is tested with SmolLM2 in test_structured_smollm2.py."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.entrypoints.conftest import serve_module

pytestmark = pytest.mark.timeout(300)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                   "required": ["unit"], "additionalProperties": False}}}
USER = [{"role": "user", "content": "What is the weather?"}]
# Renders the tools and a template variable, so the prompt's length shows what reached it.
TOOLS_TEMPLATE = (
    "{% for t in tools or [] %}tool {{ t.function.name }} {{ t.function.description }}\n"
    "{% endfor %}{% if flag %}{{ flag }}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %} call {{ c.function.name }} {{ c.function.arguments.unit }}"
    "{% endfor %}\n{% endfor %}assistant:")
DEFAULT_FLAG = "the quick brown fox"


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(
        tiny_llama_dir, tmp_path_factory, "structured_server", "--kv-cache-memory", "16MiB",
        "--served-model-name", "x", "--exclude-tools-when-tool-choice-none",
        "--default-chat-template-kwargs", json.dumps({"flag": DEFAULT_FLAG}),
        "--structured-outputs-config", '{"disable_any_whitespace": true}',
        "--trust-request-chat-template")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


def error_of(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
BAD_BOTH = [  # (fields, words in the message); sent to completions and chat
    ({"guided_json": [1, 2]}, ["guided_json"]),
    ({"guided_json": "[1, 2]"}, ["guided_json", "object"]),
    ({"guided_json": "{not json"}, ["guided_json", "JSON"]),
    ({"guided_regex": "a+", "guided_choice": ["x"]}, ["guided_regex", "guided_choice"]),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"},
     ["response_format", "guided_regex"]),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "s", "schema": SCHEMA}},
      "structured_outputs": {"choice": ["a"]}}, ["response_format", "structured_outputs.choice"]),
    ({"structured_outputs": {"regex": "a", "grammar": 'root ::= "a"'}},
     ["structured_outputs.regex", "structured_outputs.grammar"]),
    ({"structured_outputs": {"json": "[]"}}, ["structured_outputs.json"]),
    ({"structured_outputs": {}}, ["structured_outputs"]),
    ({"structured_outputs": {"regexp": "a"}}, ["regexp"]),
    ({"response_format": {"type": "json_schema"}}, ["json_schema"]),
    ({"response_format": {"type": "yaml"}}, ["response_format"]),
    ({"guided_choice": []}, ["choice"]),
    ({"stream": True, "prompt_logprobs": 2}, ["prompt_logprobs", "stream"]),
    ({"allowed_token_ids": []}, ["allowed_token_ids"]),
    ({"bad_words": [" "]}, ["bad_words"]),
]
BAD_CHAT = [
    ({"tools": []}, ["must not be an empty array"]),
    ({"tool_choice": "required"}, ["`tools` must be set"]),
    ({"tool_choice": NAMED}, ["`tools` must be set"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     ["does not match any of the specified `tools`"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, ["tool_choice"]),
    ({"tools": [WEATHER], "tool_choice": "always"}, ["tool_choice"]),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, ["name"]),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     ["parameters"]),
    ({"tools": [{"function": {"name": "f"}, "type": "code"}]}, ["type"]),
    ({"tools": [WEATHER]}, ['"auto" tool choice requires --enable-auto-tool-choice and '
                            "--tool-call-parser to be set"]),
    ({"tools": [WEATHER], "tool_choice": "auto"}, ["--enable-auto-tool-choice"]),
    ({"tools": [WEATHER], "tool_choice": NAMED, "guided_regex": "a"},
     ["tool_choice (function 'get_weather')", "guided_regex"]),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     ["tool_choice (required)", "response_format"]),
    ({"messages": [{"role": "tool", "content": "sunny"}]}, ["tool_call_id"]),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}, ]}, ["tool_calls"]),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     ["arguments"]),
    ({"thinking_token_budget": -1}, ["thinking_token_budget"]),
    ({"chat_template_kwargs": "enable_thinking"}, ["chat_template_kwargs"]),
]


@pytest.mark.parametrize(("fields", "words"), BAD_BOTH)
def test_bad_constraints_are_400_on_both_endpoints(http, fields, words):
    for path, body in (("/v1/completions", {"prompt": "The fox"}), ("/v1/chat/completions",
                                                                    {"messages": USER})):
        error = error_of(http.post(path, json={**body, "max_tokens": 4, **fields}))
        assert all(w in error["message"] for w in words), (path, error)


@pytest.mark.parametrize(("fields", "words"), BAD_CHAT)
def test_bad_tool_requests_are_400(http, fields, words):
    error = error_of(http.post("/v1/chat/completions",
                               json={"messages": USER, "max_tokens": 4, **fields}))
    assert all(w in error["message"] for w in words), error


def test_the_server_is_fine_after_the_400s(http):
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "text"}},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}},
    {"structured_outputs": {"regex": "[0-9]{3}", "disable_any_whitespace": True}},
    {"guided_choice": ["yes", "no"], "guided_decoding_backend": "xgrammar"},
    {"guided_grammar": 'root ::= "a" | "b"'},
    {"allowed_token_ids": [5, 6, 7]},
    {"bad_words": ["fox"]},
    {"prompt_logprobs": 0, "stream": True},
])
def test_constrained_requests_are_accepted(http, fields):
    for path, body in (("/v1/completions", {"prompt": "The fox"}), ("/v1/chat/completions",
                                                                    {"messages": USER})):
        response = http.post(path, json={**body, "max_tokens": 4, **fields})
        assert response.status_code == 200, (path, response.text)


def test_tools_reach_the_prompt_unless_choice_none_excludes_them(http):
    def count(**fields) -> int:
        body = {"messages": USER, "max_tokens": 1, "chat_template": TOOLS_TEMPLATE, **fields}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    plain = count()
    assert count(tools=[WEATHER], tool_choice="none") == plain  # --exclude-tools-when-...-none
    assert count(tools=[WEATHER], tool_choice="required") > plain
    assert count(tools=[WEATHER], tool_choice=NAMED) > plain
    tokenized = http.post("/tokenize", json={"messages": USER, "chat_template": TOOLS_TEMPLATE,
                                             "tools": [WEATHER]}).json()["count"]
    assert tokenized == count(tools=[WEATHER], tool_choice="required")


def test_chat_template_kwargs_override_the_server_defaults(http):
    def text(**fields) -> str:
        body = {"messages": USER, "chat_template": TOOLS_TEMPLATE, "return_token_strs": True,
                **fields}
        return "".join(http.post("/tokenize", json=body).json()["token_strs"])

    assert DEFAULT_FLAG in text()
    assert "over the dog" in text(chat_template_kwargs={"flag": "over the dog"})
    assert DEFAULT_FLAG not in text(chat_template_kwargs={"flag": ""})


def test_tool_messages_render(client, http):
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    body = {"messages": messages, "chat_template": TOOLS_TEMPLATE, "return_token_strs": True}
    rendered = "".join(http.post("/tokenize", json=body).json()["token_strs"])
    assert "call get_weather c" in rendered and "tool: sunny, 21 C" in rendered
    out = client.chat.completions.create(model="x", messages=messages, max_tokens=3,
                                         tools=[WEATHER], tool_choice="none", temperature=0)
    assert out.choices[0].message.tool_calls is None or out.choices[0].message.tool_calls == []


def test_named_and_required_choices_answer_with_tool_calls(client):
    named = client.chat.completions.create(
        model="x", messages=USER, tools=[WEATHER], tool_choice=NAMED, max_tokens=24,
        temperature=0)
    choice = named.choices[0]
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert choice.message.content in ("", None)
    assert choice.finish_reason in ("tool_calls", "length")
    streamed = list(client.chat.completions.create(
        model="x", messages=USER, tools=[WEATHER], tool_choice=NAMED, max_tokens=24,
        temperature=0, stream=True))
    pieces = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert pieces and pieces[0].function.name == "get_weather" and pieces[0].id
    assert all(p.function.name is None and p.id is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert arguments == call.function.arguments
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason


def test_continuous_usage_stats(client):
    for create, kwargs in ((client.completions.create, {"prompt": "The fox"}),
                           (client.chat.completions.create, {"messages": USER})):
        chunks = list(create(model="x", max_tokens=6, temperature=0, stream=True,
                             stream_options={"include_usage": True,
                                             "continuous_usage_stats": True},
                             extra_body={"ignore_eos": True}, **kwargs))
        usages = [c.usage for c in chunks]
        assert all(u is not None for u in usages)
        counts = [u.completion_tokens for u in usages]
        assert counts == sorted(counts) and counts[-1] == 6
        assert all(u.total_tokens == u.prompt_tokens + u.completion_tokens for u in usages)
        plain = list(create(model="x", max_tokens=6, temperature=0, stream=True,
                            stream_options={"include_usage": True}, **kwargs))
        assert all(c.usage is None for c in plain[:-1]) and plain[-1].usage is not None


def test_a_request_template_that_loops_or_grows_is_stopped(http):
    """--trust-request-chat-template runs the request's template in the bounded sandbox."""
    for template in ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                     "{% endfor %}", "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"):
        start = time.perf_counter()
        for path in ("/v1/chat/completions", "/tokenize"):
            response = http.post(path, json={"messages": USER, "max_tokens": 1,
                                              "chat_template": template})
            assert "was stopped" in error_of(response)["message"]
        assert time.perf_counter() - start < 5.0
    response = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert response.status_code == 200
