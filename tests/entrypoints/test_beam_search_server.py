"""use_beam_search through a real `pagedllm serve` (tiny random Llama) and the openai client: the
choices are transformers' beams (same configuration as tests/engine/test_beam_search.py), best
first; what beam search cannot serve is a 400 in OpenAI's shape."""

from __future__ import annotations

import openai
import pytest

from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import CompletionRequest
from pagedllm.entrypoints.openai.serving_beam_search import check_beam_search_request
from tests.entrypoints.conftest import API_KEY, MODEL_NAME
from tests.hf_reference import hf_beam_search, load_hf_model

pytestmark = pytest.mark.timeout(300)

BEAM = {"use_beam_search": True, "return_tokens_as_token_ids": True}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _ids(tokens: list[str]) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in tokens]


def test_completions_beams_are_transformers_beams(client, tiny_llama_dir, tokenizer):
    hf = load_hf_model(tiny_llama_dir)
    prompts = [tokenizer.encode(p) for p in ("The quick brown fox", "Once upon a time")]
    out = client.completions.create(
        model=MODEL_NAME, prompt=prompts, n=3, max_tokens=6, logprobs=0,
        extra_body={**BEAM, "length_penalty": 0.5})
    assert [c.index for c in out.choices] == list(range(6))
    for i, ids in enumerate(prompts):
        choices = out.choices[3 * i: 3 * i + 3]
        expected = hf_beam_search(hf, ids, 3, 6, 0.5, [tokenizer.eos_token_id])
        assert [_ids(c.logprobs.tokens) for c in choices] == expected
        assert [c.text for c in choices] == [tokenizer.decode(e) for e in expected]
        assert all(c.finish_reason == "length" for c in choices)
    assert out.usage.completion_tokens == 6 * 6


def test_chat_beams_are_transformers_beams(client, tiny_llama_dir, tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, n=2, max_tokens=5, logprobs=True,
        extra_body=BEAM)
    expected = hf_beam_search(load_hf_model(tiny_llama_dir), prompt, 2, 5, 1.0,
                              [tokenizer.eos_token_id])
    assert [_ids([t.token for t in c.logprobs.content]) for c in out.choices] == expected
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.role == "assistant"


@pytest.mark.parametrize("fields, param", [
    ({"stream": True}, "stream"),
    ({"n": 33}, "n"),
    ({"stop": ["fox"]}, "stop"),
    ({"top_p": 0.5}, "top_p"),
    ({"repetition_penalty": 1.2}, "repetition_penalty"),
    ({"response_format": {"type": "json_object"}}, "use_beam_search"),
])
def test_what_beam_search_cannot_do_is_a_400(client, fields, param):
    body = {"model": MODEL_NAME, "prompt": "The quick", "max_tokens": 4, "n": 2,
            "use_beam_search": True, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/completions", body=body, cast_to=object)
    assert e.value.status_code == 400 and e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


def test_chat_stream_with_beam_search_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], n=2, stream=True,
            extra_body={"use_beam_search": True})
    assert e.value.body["param"] == "stream"


def test_beam_search_refused_with_speculative_decoding():
    request = CompletionRequest(prompt="hi", n=2, use_beam_search=True)
    check_beam_search_request(request, speculative_decoding=False)
    with pytest.raises(BadRequestError, match="speculative"):
        check_beam_search_request(request, speculative_decoding=True)
