"""The real embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers reading the
same GGUF (both dequantize to fp32): greedy tokens must agree for 32 tokens on several prompts,
batched together with chunked prefill."""

from __future__ import annotations

import os

import pytest

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_greedy, load_hf_model

pytestmark = [pytest.mark.gguf, pytest.mark.slow]

NUM_TOKENS = 32


def test_smollm2_gguf_greedy_matches_transformers(smollm2_gguf_path):
    # quantization "none": both sides dequantize (native Q4_1 is tested in tests/quantization)
    llm = LLM("SmolLM2-135M-Instruct", kv_cache_memory="256MiB", max_model_len=1024,
              quantization="none",
              max_num_batched_tokens=64)
    tokenizer = llm.get_tokenizer()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, tokenize=False)
    prompts = [
        tokenizer.encode(chat, add_special_tokens=False),
        tokenizer.encode("The history of the Roman Empire began"),
        tokenizer.encode("def fibonacci(n):\n    "),
        tokenizer.encode("Once upon a time, in a small village by the sea, there lived"),
    ]
    outputs = llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True),
        use_tqdm=False)
    hf = load_hf_model(os.path.dirname(smollm2_gguf_path), os.path.basename(smollm2_gguf_path))
    for prompt, out in zip(prompts, outputs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, NUM_TOKENS)
    assert "Paris" in outputs[0].outputs[0].text
