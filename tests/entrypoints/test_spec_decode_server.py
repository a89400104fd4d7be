"""Speculative decoding through `pagedllm serve --speculative-config` and the openai client:
the same greedy tokens as the engine without drafts, whole and streamed; vLLM's spec_decode
counters in /metrics; beam search refused on such a server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagedllm import LLM, SamplingParams
from tests.entrypoints.conftest import serve_module
from tests.spec_decode.test_engine import prompts

pytestmark = pytest.mark.timeout(300)
SPEC = {"method": "ngram", "num_speculative_tokens": 4, "disable_by_batch_size": None,
        "draft_token_cost": 0.1}


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    yield from serve_module(tiny_llama_dir, tmp_path_factory, "spec_server",
                            "--kv-cache-memory", "16MiB", "--max-model-len", "256",
                            "--served-model-name", "tiny", "--speculative-config",
                            json.dumps(SPEC))


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def expected(tiny_llama_dir, tiny_vocab):
    token_prompts = prompts(tiny_vocab, 3)
    llm = LLM(tiny_llama_dir, kv_cache_memory="16MiB", max_model_len=256)
    outs = llm.generate([{"prompt_token_ids": p} for p in token_prompts],
                        SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    return token_prompts, [o.outputs[0].text for o in outs]


def spec_counters(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("pagedllm:spec_decode") and "position" not in s.labels}


def test_same_greedy_text_and_counted_drafts(server, client, expected):
    token_prompts, texts = expected
    before = spec_counters(server)
    got = client.completions.create(model="tiny", prompt=token_prompts, max_tokens=40,
                                     temperature=0)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == texts
    after = spec_counters(server)
    drafts = "pagedllm:spec_decode_num_draft_tokens_total"
    accepted = "pagedllm:spec_decode_num_accepted_tokens_total"
    assert after[drafts] > before.get(drafts, 0)
    assert after[accepted] > before.get(accepted, 0)
    assert after[accepted] <= after[drafts]


def test_streamed_deltas_reassemble(client, expected):
    token_prompts, texts = expected
    stream = client.completions.create(model="tiny", prompt=token_prompts[0], max_tokens=40,
                                       temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == texts[0]


def test_beam_search_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="speculative"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=4, n=2,
                                  extra_body={"use_beam_search": True})
