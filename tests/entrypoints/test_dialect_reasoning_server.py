"""--reasoning-parser in the Anthropic and Ollama dialects (tiny random Llama with `<think>`
tokens, DeepSeek-R1's parser): the thinking chat completions put in `reasoning` comes back as a
`thinking` block (whole and streamed as thinking_delta events) and as Ollama's `thinking`, the
answer as text; Ollama's think=false drops it."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

pytestmark = pytest.mark.timeout(300)

USER = [{"role": "user", "content": "Why?"}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(shared_thinker_server):
    return shared_thinker_server


@pytest.fixture(scope="module")
def expected(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    message = client.chat.completions.create(model="thinker", messages=USER, temperature=0,
                                             max_tokens=MAX_TOKENS).choices[0].message
    assert message.reasoning  # the parser splits this model's output at all
    return message


def test_anthropic_thinking_blocks(server, expected):
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    greedy = {"extra_body": {"temperature": 0}}
    message = client.messages.create(model="thinker", messages=USER, max_tokens=MAX_TOKENS,
                                     **greedy)
    thinking = [b.thinking for b in message.content if b.type == "thinking"]
    text = "".join(b.text for b in message.content if b.type == "text")
    assert thinking == [expected.reasoning] and text == (expected.content or "")
    assert message.content[0].type == "thinking"  # thinking first
    with client.messages.stream(model="thinker", messages=USER, max_tokens=MAX_TOKENS,
                                **greedy) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta.thinking for e in events
              if e.type == "content_block_delta" and e.delta.type == "thinking_delta"]
    assert "".join(deltas) == expected.reasoning
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in message.content]


def test_ollama_thinking(server, expected):
    client = ollama.Client(host=server.url)
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    answer = client.chat(model="thinker", messages=USER, options=options)
    assert answer.message.thinking == expected.reasoning
    assert answer.message.content == (expected.content or "")
    parts = list(client.chat(model="thinker", messages=USER, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == expected.reasoning
    hidden = client.chat(model="thinker", messages=USER, options=options, think=False)
    assert hidden.message.thinking is None
    assert "thinking" in client.show("thinker").capabilities
