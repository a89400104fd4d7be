"""Ollama's dialect through a real `pagedllm serve` (tiny random Llama; MiniLM for /api/embed)
and the official ollama client: chat and generate give chat completions' greedy text, stream
NDJSON by default and reassemble to the whole answer, tools, format schemas, the model listing
endpoints, embeddings equal to /v1/embeddings', and errors as {"error": ...} (never a 500)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.entrypoints.conftest import serve_module

pytestmark = pytest.mark.timeout(300)

MODEL = "tiny"
USER = [{"role": "user", "content": "What is a fox?"}]
GREEDY = {"temperature": 0, "num_predict": 8}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}},
                   "required": ["unit"], "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(
        tiny_llama_dir, tmp_path_factory, "ollama_server", "--kv-cache-memory", "16MiB",
        "--served-model-name", MODEL, "second", "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes",
        "--structured-outputs-config", '{"disable_any_whitespace": true}')


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def chat(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def chat_answer(chat, messages, max_tokens=8):
    out = chat.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                       max_tokens=max_tokens)
    return out.choices[0], out.usage


def test_chat_equals_chat_completions_and_streams_by_default(client, chat, http):
    answer = client.chat(model=MODEL, messages=USER, options=GREEDY, stream=False)
    choice, usage = chat_answer(chat, USER)
    assert answer.message.role == "assistant" and answer.message.content == choice.message.content
    assert answer.done and answer.done_reason == choice.finish_reason
    assert answer.prompt_eval_count == usage.prompt_tokens
    assert answer.eval_count == usage.completion_tokens
    assert answer.total_duration >= answer.eval_duration >= 0
    parts = list(client.chat(model=f"{MODEL}:latest", messages=USER, options=GREEDY,
                             stream=True))
    assert "".join(p.message.content for p in parts) == answer.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == answer.eval_count
    # no "stream" in the body: NDJSON lines, as Ollama
    raw = http.post("/api/chat", json={"model": MODEL, "messages": USER, "options": GREEDY})
    assert raw.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in raw.text.splitlines()]
    assert len(lines) > 1 and lines[-1]["done"] is True


def test_generate_templated_raw_and_context(client, chat, http):
    templated = client.generate(model=MODEL, prompt="What is a fox?", system="Be brief.",
                                options=GREEDY)
    choice, _ = chat_answer(chat, [{"role": "system", "content": "Be brief."}, *USER])
    assert templated.response == choice.message.content and templated.done
    raw = client.generate(model=MODEL, prompt="The quick brown fox", raw=True, options=GREEDY)
    completion = chat.completions.create(model=MODEL, prompt="The quick brown fox",
                                         max_tokens=8, temperature=0)
    assert raw.response == completion.choices[0].text
    assert raw.prompt_eval_count == completion.usage.prompt_tokens
    # context: the token ids so far; continuing from it equals one longer raw prompt
    assert len(raw.context) == raw.prompt_eval_count + raw.eval_count
    more = client.generate(model=MODEL, prompt=" and", raw=True, context=raw.context,
                           options=GREEDY)
    ids = [*raw.context, *http.post("/tokenize", json={
        "prompt": " and", "add_special_tokens": False}).json()["tokens"]]
    whole = chat.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert more.response == whole.choices[0].text
    streamed = list(client.generate(model=MODEL, prompt="What is a fox?", system="Be brief.",
                                    options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == templated.response
    assert streamed[-1].context == templated.context
    # the empty prompt loads the model
    loaded = client.generate(model=MODEL)
    assert loaded.done and loaded.done_reason == "load"


def test_tools_and_format(client):
    shaped = client.chat(model=MODEL, messages=USER, format=SCHEMA,
                         options={"temperature": 0, "num_predict": 30})
    jsonschema.validate(json.loads(shaped.message.content), SCHEMA)
    as_json = client.generate(model=MODEL, prompt="JSON please", format="json",
                              options={"temperature": 0, "num_predict": 30,
                                       "stop": ["}"]})
    assert as_json.done
    # Ollama has no tool_choice: tools mean "auto", the --tool-call-parser reads the calls
    # (the random model writes none; the answer is its text, as without tools)
    with_tools = client.chat(model=MODEL, messages=USER, tools=[WEATHER], options=GREEDY)
    assert with_tools.done and not with_tools.message.tool_calls
    # an earlier call and its result (no ids in Ollama's messages) go into the prompt
    history = [*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"unit": "c"}}}]},
        {"role": "tool", "content": "21 degrees", "tool_name": "get_weather"}]
    answer = client.chat(model=MODEL, messages=history, options=GREEDY)
    assert answer.prompt_eval_count > client.chat(model=MODEL, messages=USER,
                                                  options=GREEDY).prompt_eval_count


def test_model_endpoints(client, http, tiny_llama_dir):
    tags = client.list()
    assert [m.model for m in tags.models] == [MODEL, "second"]
    assert all(m.size > 0 and m.details.family == "llama" for m in tags.models)
    shown = client.show(MODEL)
    assert shown.modelinfo["llama.context_length"] == 512
    assert shown.capabilities == ["completion", "tools"] and shown.details.format == "safetensors"
    running = client.ps()
    assert [m.model for m in running.models] == [MODEL, "second"]
    assert running.models[0].context_length == 512
    assert http.get("/api/version").json()["version"]


BAD = [
    ("/api/chat", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/api/chat", {"model": MODEL, "messages": USER, "options": {"temperature": -1}},
     "temperature"),
    ("/api/chat", {"model": MODEL, "messages": USER, "options": {"tempreature": 1}},
     "tempreature"),
    ("/api/chat", {"model": MODEL, "messages": USER, "format": "xml"}, "format"),
    ("/api/chat", {"model": MODEL, "messages": USER, "options": {"num_predict": 100_000}},
     "maximum context length"),
    ("/api/chat", {"model": MODEL, "messages": "hi"}, "messages"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "context": [10**9]}, "vocabulary"),
    ("/api/generate", {"prompt": "x"}, "model"),
    ("/api/embed", {"model": MODEL, "input": "x"}, ""),
]


@pytest.mark.parametrize(("path", "body", "needle"), BAD)
def test_bad_requests_are_400_in_ollama_shape(http, path, body, needle):
    response = http.post(path, json={"stream": False, **body})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and needle in response.json()["error"]


def test_unknown_model_is_404_and_the_engine_keeps_serving(client, http):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope", messages=USER)
    assert info.value.status_code == 404
    assert http.post("/api/chat", content=b"{bad", headers={
        "content-type": "application/json"}).status_code == 400
    assert client.chat(model=MODEL, messages=USER, options=GREEDY).done


@pytest.fixture(scope="module")
def embed_server(shared_minilm_server):
    return shared_minilm_server


def test_embed_equals_openai_embeddings(embed_server):
    client = ollama.Client(host=embed_server.url)
    texts = ["Hello world", "Paged attention stores keys in blocks."]
    out = client.embed(model="all-MiniLM-L6-v2", input=texts)
    reference = openai.OpenAI(base_url=f"{embed_server.url}/v1", api_key="x").embeddings.create(
        model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384
    for got, expected in zip(out.embeddings, reference.data):
        assert max(abs(a - b) for a, b in zip(got, expected.embedding)) < 1e-6
    assert out.prompt_eval_count == reference.usage.prompt_tokens
    single = client.embed(model="all-MiniLM-L6-v2", input="Hello world")
    assert max(abs(a - b) for a, b in zip(single.embeddings[0], out.embeddings[0])) < 1e-5
    assert client.show("all-MiniLM-L6-v2").capabilities == ["embedding"]
