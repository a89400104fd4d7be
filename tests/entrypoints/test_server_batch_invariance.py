"""Batch invariance through `pagedllm serve` with the embedded default model (SmolLM2 Q4_1, prefix
caching on), as a new user meets it: the same `temperature=0` request answers the same text with
the same logprobs cold, after a prefix-cache hit, and among concurrent requests. (The defect this
guards against: the first France chat answered "... Paris.", every repeat "L'Étoile, la
Marseillaise,".)"""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.entrypoints.conftest import start_server

pytestmark = [pytest.mark.gguf, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct"
STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named "
         "Tobias and his clever granddaughter. Every morning they walked down to the harbour, "
         "where the boats rocked gently and the gulls cried overhead. One day a stranger "
         "arrived, a tall man in a grey coat who said his name was")  # fmt: skip


@pytest.fixture(scope="module")
def smollm2_server(smollm2_gguf_path, tmp_path_factory):
    log_path = str(tmp_path_factory.mktemp("smollm2_server") / "server.log")
    remote = start_server(MODEL, log_path, "--kv-cache-memory", "128MiB",
                          "--max-model-len", "1024")  # fmt: skip
    try:
        yield remote
    finally:
        remote.stop()


def _chat_request(question: str) -> dict:
    return dict(model=MODEL, messages=[{"role": "user", "content": question}], temperature=0,
                max_tokens=24, logprobs=True)  # fmt: skip


def _answer(response) -> tuple[str, list[float]]:
    choice = response.choices[0]
    return choice.message.content, [t.logprob for t in choice.logprobs.content]


def _chat(client: openai.OpenAI, question: str):
    return _answer(client.chat.completions.create(**_chat_request(question)))


def _completion(client, prompt: str):
    choice = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=16,
                                       logprobs=1).choices[0]  # fmt: skip
    return choice.text, choice.logprobs.token_logprobs


def test_repeated_requests_answer_the_same_after_prefix_hits(smollm2_server):
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="EMPTY", max_retries=0)
    cold = _chat(client, "What is the capital of France?")
    assert "Paris" in cold[0]
    for _ in range(2):  # the prompt's blocks now come from the prefix cache
        assert _chat(client, "What is the capital of France?") == cold
    story = _completion(client, STORY)
    assert _completion(client, STORY) == story
    assert _completion(client, STORY + " Barnaby.")[0]  # a hit on the story's blocks, longer


def test_concurrent_requests_answer_as_alone(smollm2_server):
    questions = [f"Name {n} animals that live in the sea." for n in range(2, 10)]
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="EMPTY", max_retries=0)
    alone = [_chat(client, q) for q in questions]

    async def together():
        aclient = openai.AsyncOpenAI(base_url=f"{smollm2_server.url}/v1", api_key="EMPTY",
                                     max_retries=0)  # fmt: skip

        async def one(question: str):
            return _answer(await aclient.chat.completions.create(**_chat_request(question)))

        try:
            return await asyncio.gather(*(one(q) for q in questions))
        finally:
            await aclient.close()

    assert asyncio.run(together()) == alone
