"""The real SmolLM2-135M-Instruct GGUF split over 3 ranks (its 9 query / 3 KV heads divide by
3, not by 2): greedy tokens of the native Q4_1 weights (each rank's quantized blocks sliced
from the file: rows for column-parallel layers, whole 32-value blocks of columns for
row-parallel ones, its vocabulary rows of the Q4_1 embedding) equal the one-rank engine's, and
the dequantized fp32 model's equal transformers' reading the same file. Every rank runs the
fused CPU stack (each layer cut at its two all-reduces), and the test reads its counters."""

from __future__ import annotations

import os

import pytest

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_greedy, load_hf_model

pytestmark = [pytest.mark.gguf, pytest.mark.slow]

NUM_TOKENS = 16
TEXTS = ["def fibonacci(n):\n    ",
         "Once upon a time, in a small village by the sea, there lived an old fisherman who"]
"""Two prompts, the second longer than a 16-token prefill chunk."""


def run(quantization: str, tp: int) -> tuple[list[list[int]], list[list[int]]]:
    llm = LLM("SmolLM2-135M-Instruct", kv_cache_memory="64MiB", max_model_len=512,
              max_num_batched_tokens=16, tensor_parallel_size=tp, quantization=quantization)
    try:
        tokenizer = llm.get_tokenizer()
        prompts = [tokenizer.encode(text) for text in TEXTS]
        params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        for stats in llm.collective_rpc("execution_stats"):
            # every rank's steps ran through the fused stack (cut at the all-reduces under -tp)
            assert stats["fused_steps"] > 0, stats
            assert stats["fused_tensor_parallel_steps"] == (stats["fused_steps"] if tp > 1 else 0)
        return prompts, [o.outputs[0].token_ids for o in outputs]
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_q4_1_tp3_equals_tp1(smollm2_gguf_path):
    assert run("auto", 3) == run("auto", 1)


def test_fp32_tp3_equals_transformers(smollm2_gguf_path):
    prompts, tokens = run("none", 3)
    hf = load_hf_model(os.path.dirname(smollm2_gguf_path), os.path.basename(smollm2_gguf_path))
    assert tokens == [hf_greedy(hf, prompt, NUM_TOKENS) for prompt in prompts]


def test_tp2_is_refused_with_the_head_counts():
    with pytest.raises(ValueError, match="9 attention heads cannot be split over "
                                         "tensor_parallel_size=2"):
        LLM("SmolLM2-135M-Instruct", tensor_parallel_size=2)
