"""int8 / int4 weight-only quantization and native GGUF on whole models: the quantized model's
logits match the float model built from its dequantized weights, and greedy outputs agree."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    dequantized_reference_dir,
    engine_logits,
    greedy_with_logprobs,
    random_prompts,
)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_weight_only_matches_dequantized_float(method, tiny_llama_dir, tmp_path):
    reference = dequantized_reference_dir(tiny_llama_dir, method, str(tmp_path))
    prompts = random_prompts([7, 23, 40])
    quantized = engine_logits(tiny_llama_dir, prompts, quantization=method)
    expected = engine_logits(reference, prompts, quantization=None)
    for q, e in zip(quantized, expected):
        # bf16 activations in the packed kernels: ~0.5 % relative error
        assert float((q - e).norm() / e.norm()) < 1e-2
    kwargs = dict(kv_cache_memory="32MiB", max_model_len=128)
    assert_greedy_agrees(
        greedy_with_logprobs(LLM(tiny_llama_dir, quantization=method, **kwargs), prompts),
        greedy_with_logprobs(LLM(reference, **kwargs), prompts),
    )


def test_quantized_model_holds_no_float_linear_weights(tiny_llama_dir):
    from pagedllm.model_executor.layers.linear import LinearBase

    llm = LLM(tiny_llama_dir, quantization="int8", kv_cache_memory="32MiB", max_model_len=128)
    model = llm.llm_engine.engine_core.engine_core.model_runner.model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears
    for layer in linears:
        tensors = [*layer.parameters(), *layer.buffers()]
        weights = layer.output_size * layer.input_size
        # per-group scales/mins are float: at most 2 per 32 weights, never a float weight copy
        floats = sum(t.numel() for t in tensors if t.is_floating_point())
        assert floats <= weights // 16 + layer.output_size, [(t.dtype, t.shape) for t in tensors]
        assert any(t.dtype == torch.int8 for t in tensors)


@pytest.mark.gguf
@pytest.mark.slow
def test_smollm2_q4_1_native_matches_dequantized(smollm2_gguf_path):
    """Native Q4_1 vs dequantized float: greedy tokens agree for >= 16 tokens on most prompts,
    and where they part within those 16, the float run itself had a near-tie (< 0.1 logprob
    between its top 2). (Past 16 free-running tokens, the int8 rounding of activations, ~0.3 %
    per layer as in llama.cpp, has compounded enough to flip wider margins: 0.22 was seen.)"""
    prompts_text = [
        "The history of the Roman Empire began",
        "Once upon a time, in a small village by the sea, there lived",
        "What is the capital of France? The capital of France is",
        "def fibonacci(n):\n    ",
    ]
    kwargs = dict(kv_cache_memory="64MiB", max_model_len=256)
    native = LLM(smollm2_gguf_path, **kwargs)
    assert native.llm_engine.config.model.quantization == "gguf"
    tokenizer = native.get_tokenizer()
    prompts = [tokenizer.encode(p) for p in prompts_text]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=2)
    got = [o.outputs[0] for o in native.generate(prompts, params, use_tqdm=False)]
    dequantized = LLM(smollm2_gguf_path, quantization="none", **kwargs)
    want = [o.outputs[0] for o in dequantized.generate(prompts, params, use_tqdm=False)]
    agree = []
    for g, w in zip(got, want):
        n = next((i for i, (a, b) in enumerate(zip(g.token_ids, w.token_ids)) if a != b), 32)
        agree.append(n)
        if n < 16:
            top2 = sorted((lp.logprob for lp in w.logprobs[n].values()), reverse=True)[:2]
            assert top2[0] - top2[1] < 0.1, (n, top2)
    print("SmolLM2 Q4_1 native vs dequantized: tokens in agreement per prompt:", agree)
    assert sum(n >= 16 for n in agree) >= 3, agree
