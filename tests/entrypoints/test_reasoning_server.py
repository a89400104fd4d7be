"""--reasoning-parser through `pagedllm serve` and the openai client: the thinking lands in
`reasoning` (and `reasoning_content`), the answer in `content`, whole and streamed; a thinking
budget ends the thinking and a regex shapes the answer (tiny random Llama whose tokenizer has
`<think>`/`</think>` as tokens, DeepSeek-R1's parser)."""

from __future__ import annotations

import re

import openai
import pytest

pytestmark = pytest.mark.timeout(300)
MESSAGES = [{"role": "user", "content": "What is it?"}]
BUDGET = 4


@pytest.fixture(scope="module")
def server(shared_thinker_server):
    return shared_thinker_server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


def ask(client, stream=False, **extra):
    return client.chat.completions.create(
        model="thinker", messages=MESSAGES, temperature=0, max_tokens=40, stream=stream,
        extra_body={"thinking_token_budget": BUDGET, "structured_outputs": {"regex": "[0-9]{3}"},
                    **extra})


def test_thinking_and_answer_are_split(client):
    message = ask(client).choices[0].message
    assert re.fullmatch("[0-9]{3}", message.content), message
    assert message.reasoning_content and message.reasoning == message.reasoning_content
    free = client.chat.completions.create(model="thinker", messages=MESSAGES, temperature=0,
                                          max_tokens=BUDGET)
    # the thinking is the model's free continuation, cut by the budget
    assert message.reasoning == free.choices[0].message.reasoning


def test_streamed_deltas_reassemble_to_the_whole_answer(client):
    whole = ask(client).choices[0].message
    reasoning, content, finish = "", "", None
    for chunk in ask(client, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning", None) or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (reasoning, content, finish) == (whole.reasoning, whole.content, "stop")


def test_include_reasoning_false_drops_it(client):
    message = ask(client, include_reasoning=False).choices[0].message
    assert message.reasoning is None and re.fullmatch("[0-9]{3}", message.content)
