"""truncate_prompt_tokens (vLLM's) through a real `pagedllm serve` (tiny random Llama): the prompt
keeps its last k tokens, so the answer equals the one to those k token ids given as the prompt;
chat truncates the rendered conversation; -1 keeps max_model_len; bad values are 400s."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(300)

LONG = "The quick brown fox jumps over the lazy dog. " * 8
KEEP = 10


@pytest.fixture(scope="module")
def server(shared_tiny_server):
    return shared_tiny_server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def greedy(client, prompt, **extra):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True, **extra})


def test_completion_keeps_the_last_tokens(client, http):
    ids = http.post("/tokenize", json={"prompt": LONG}).json()["tokens"]
    assert len(ids) > KEEP
    cut = greedy(client, LONG, truncate_prompt_tokens=KEEP)
    assert cut.usage.prompt_tokens == KEEP
    assert cut.choices[0].text == greedy(client, ids[-KEEP:]).choices[0].text
    echoed = greedy(client, LONG, truncate_prompt_tokens=KEEP, echo=True)
    assert echoed.choices[0].text.startswith(http.post(
        "/detokenize", json={"tokens": ids[-KEEP:]}).json()["prompt"])
    # larger than the prompt: nothing to cut
    assert greedy(client, LONG, truncate_prompt_tokens=len(ids) + 5).usage.prompt_tokens == len(
        ids)


def test_chat_truncates_the_rendered_prompt(client, http):
    messages = [{"role": "user", "content": LONG}]
    ids = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                          temperature=0,
                                          extra_body={"truncate_prompt_tokens": KEEP,
                                                      "ignore_eos": True})
    assert chat.usage.prompt_tokens == KEEP
    assert chat.choices[0].message.content == greedy(client, ids[-KEEP:]).choices[0].text


def test_minus_one_keeps_max_model_len_and_bad_values_are_400(client, http):
    too_long = "fox " * 700  # more than the 512-token context
    response = http.post("/v1/completions", json={
        "model": "tiny", "prompt": too_long, "max_tokens": 4, "truncate_prompt_tokens": -1})
    # kept 512 tokens: the context is full, so no room to generate: a 400 naming the length
    assert response.status_code == 400 and "maximum context length" in response.text
    ok = http.post("/v1/completions", json={
        "model": "tiny", "prompt": too_long, "max_tokens": 4, "truncate_prompt_tokens": 500})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 500
    for value in (0, 513, -2, "x"):
        bad = http.post("/v1/completions", json={"model": "tiny", "prompt": "fox",
                                                 "truncate_prompt_tokens": value})
        assert bad.status_code == 400 and "truncate_prompt_tokens" in bad.text, bad.text
