"""The real Gemma 3 270M (Q4_K_M GGUF from pip packages: Q4_K, Q5_0, Q6_K, Q8_0 tensors) against
transformers reading the same GGUF (both dequantize to fp32): greedy tokens agree for 16 tokens on
two prompts, batched with chunked prefill, one of them longer than a chunk. (transformers'
reference is most of this test's time: its GGUF dequantization and one unbatched generate per
prompt.)"""

from __future__ import annotations

import os

import pytest

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_greedy, load_hf_model

pytestmark = [pytest.mark.gguf, pytest.mark.slow]

NUM_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his wife."
    " Every morning he went out in his boat, and every evening",
]


def test_gemma3_270m_greedy_matches_transformers(gemma3_270m_gguf_path):
    llm = LLM("gemma-3-270m", kv_cache_memory="128MiB", max_model_len=512,
              max_num_batched_tokens=16, quantization="none")  # fmt: skip
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    hf = load_hf_model(
        os.path.dirname(gemma3_270m_gguf_path), os.path.basename(gemma3_270m_gguf_path)
    )
    for prompt, out in zip(prompts, outputs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, NUM_TOKENS)
    # sensible text, not just the same noise as the reference (the 270M base model answers
    # " the capital of the country of France. It is the largest city in France ...")
    assert "France" in outputs[0].outputs[0].text
