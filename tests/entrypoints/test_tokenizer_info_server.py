"""GET /tokenizer_info and --served-model-name aliases through a real `pagedllm serve` (tiny random
Llama): the info matches the model's tokenizer and is enough to tokenize and template remotely as
lm-eval's remote tokenizer does (eos_token through /tokenize, chat_template rendered locally);
every alias is listed and accepted by every dialect, each answer naming the alias it was asked."""

from __future__ import annotations

import anthropic
import httpx
import jinja2
import ollama
import openai
import pytest
from transformers import AutoTokenizer

from tests.conftest import SHARED_TINY_NAMES

pytestmark = pytest.mark.timeout(300)

ALIASES = SHARED_TINY_NAMES
USER = [{"role": "user", "content": "What is a fox?"}]


@pytest.fixture(scope="module")
def server(shared_tiny_server):
    return shared_tiny_server


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_tokenizer_info_matches_the_tokenizer(http, tiny_llama_dir):
    info = http.get("/tokenizer_info").json()
    reference = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert info["tokenizer_class"] == type(reference).__name__
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert info[name] == getattr(reference, name)
    assert info["chat_template"] == reference.chat_template
    assert info["model_max_length"] == 512
    assert not any(key.endswith("_file") for key in info)
    # lm-eval's remote tokenizer: eos id through /tokenize, the template rendered locally
    eos = http.post("/tokenize", json={"prompt": info["eos_token"],
                                       "add_special_tokens": False}).json()["tokens"]
    assert eos == [reference.eos_token_id]
    text = jinja2.Environment().from_string(info["chat_template"]).render(
        messages=USER, add_generation_prompt=True)
    local = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    served = http.post("/tokenize", json={"messages": USER}).json()
    assert local["tokens"] == served["tokens"]


def test_every_alias_is_listed_and_accepted(server, http):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)
    assert [m.id for m in client.models.list().data] == ALIASES
    texts = set()
    for alias in ALIASES:
        chat = client.chat.completions.create(model=alias, messages=USER, max_tokens=4,
                                              temperature=0)
        completion = client.completions.create(model=alias, prompt="fox", max_tokens=2)
        response = client.responses.create(model=alias, input="What is a fox?",
                                           max_output_tokens=4, temperature=0)
        message = anthropic.Anthropic(base_url=server.url, api_key="x",
                                      max_retries=0).messages.create(
            model=alias, messages=USER, max_tokens=4, extra_body={"temperature": 0})
        ollama_chat = ollama.Client(host=server.url).chat(
            model=alias, messages=USER, options={"temperature": 0, "num_predict": 4})
        assert (chat.model, completion.model, response.model, message.model,
                ollama_chat.model) == (alias,) * 5
        texts.add((chat.choices[0].message.content, response.output_text,
                   message.content[0].text if message.content else "",
                   ollama_chat.message.content))
    assert len(texts) == 1  # one model behind every name
    assert len(set(next(iter(texts)))) == 1  # and every dialect gives the same greedy text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="tiny-2", messages=USER, max_tokens=2)
    assert [m["name"] for m in http.get("/api/tags").json()["models"]] == ALIASES
