"""/v1/embeddings on a real `pagedllm serve all-MiniLM-L6-v2` (task auto-detected), through the
official openai client: floats and base64, token-id inputs, usage, errors."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embed_server(shared_minilm_server):
    return shared_minilm_server


@pytest.fixture(scope="module")
def client(embed_server):
    return openai.OpenAI(base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0)


def test_float_and_base64_agree(client, embed_server):
    texts = ["Hello world", "A much longer sentence about paged attention and embeddings."]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in floats.data)
    assert abs(sum(x * x for x in floats.data[0].embedding) - 1.0) < 1e-5
    assert floats.model == MODEL
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 2 * 2
    raw = httpx.post(f"{embed_server.url}/v1/embeddings",
                     json={"model": MODEL, "input": texts, "encoding_format": "base64"}).json()
    for item, expected in zip(raw["data"], floats.data):
        decoded = struct.unpack("<384f", base64.b64decode(item["embedding"]))
        assert max(abs(a - b) for a, b in zip(decoded, expected.embedding)) < 1e-6
    # The openai client asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=texts)
    assert max(abs(a - b) for a, b in zip(default.data[1].embedding,
                                           floats.data[1].embedding)) < 1e-6


def test_token_id_inputs(client):
    text = client.embeddings.create(model=MODEL, input="Hello world", encoding_format="float")
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    one = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    many = client.embeddings.create(model=MODEL, input=[ids, ids[:3]], encoding_format="float")
    assert one.usage.prompt_tokens == 4 and many.usage.total_tokens == 7
    assert max(abs(a - b) for a, b in zip(one.data[0].embedding, text.data[0].embedding)) < 1e-5
    assert many.data[0].embedding == one.data[0].embedding


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="hello", dimensions=8)
    assert "Matryoshka" in info.value.message and info.value.body["param"] == "dimensions"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="hello")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        client.embeddings.create(model=MODEL, input=[7592] * 300)
    with pytest.raises(openai.BadRequestError, match="input must not be empty"):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        client.completions.create(model=MODEL, prompt="hello")


def test_truncate_prompt_tokens_keeps_the_last_tokens(client, embed_server):
    text = "Paged attention stores keys and values in fixed-size blocks. " * 4
    ids = httpx.post(f"{embed_server.url}/tokenize", json={"prompt": text}).json()["tokens"]
    cut = client.embeddings.create(model=MODEL, input=text, encoding_format="float",
                                   extra_body={"truncate_prompt_tokens": 8})
    same = client.embeddings.create(model=MODEL, input=ids[-8:], encoding_format="float")
    assert cut.usage.prompt_tokens == 8
    assert max(abs(a - b) for a, b in zip(cut.data[0].embedding, same.data[0].embedding)) < 1e-5
