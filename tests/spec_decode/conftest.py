"""The spec decoding tests' shared reference: greedy outputs of the tiny random Llama without
speculation."""

from __future__ import annotations

import pytest

from pagedllm import LLM
from tests.spec_decode.test_engine import greedy, prompts, run, trace


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tiny_vocab):
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    token_prompts = prompts(tiny_vocab)
    params = [greedy(max_tokens=30 + 7 * i) for i in range(len(token_prompts))]
    outs, _ = run(llm, token_prompts, params)
    return token_prompts, params, [trace(o) for o in outs]
