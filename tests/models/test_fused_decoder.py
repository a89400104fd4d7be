"""Fused decoder layers (models/llama_fused.py + kernels/csrc/decoder_layer.cpp) against the
eager modules (enforce_eager): the same logprobs bit for bit on mixed batches with chunked
prefill, for every Llama-shaped family, dense and quantized; other families are left eager."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.kernels import cpu_kernels_available
from tests.engine_internals import loaded_model

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="compiled kernels unavailable")

PROMPTS = [[5 + (7 * i + 3 * j) % 90 for j in range(n)] for i, n in enumerate([3, 17, 40, 1, 26])]


def _run(model_dir: str, enforce_eager: bool, **kwargs):
    llm = LLM(model_dir, enforce_eager=enforce_eager, kv_cache_memory="16MiB", max_model_len=128,
              max_num_batched_tokens=16, **kwargs)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=3)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    model = loaded_model(llm)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs], model


def _logprob_rows(result):
    return [[sorted((t, lp.logprob) for t, lp in step.items()) for step in logprobs]
            for _, logprobs in result]  # fmt: skip


@pytest.mark.parametrize(
    "family, overrides, quantization",
    [
        ("LlamaConfig", {}, None),
        ("LlamaConfig", {}, "int4"),
        ("LlamaConfig", {"tie_word_embeddings": True}, "int8"),
        ("Qwen2Config", {}, None),  # q/k/v bias
        ("MistralConfig", {"sliding_window": 8}, None),
    ],
)
def test_fused_layers_equal_eager(tiny_model_factory, family, overrides, quantization):
    model_dir = tiny_model_factory(family, **overrides)
    fused, fused_model = _run(model_dir, False, quantization=quantization)
    eager, eager_model = _run(model_dir, True, quantization=quantization)
    stack = fused_model.model._fused_layers  # the fused path ran, every layer in it
    assert stack.stack.num_layers() == len(fused_model.model.layers)
    assert eager_model.model._fused_layers is False  # never built
    assert [t for t, _ in fused] == [t for t, _ in eager]
    assert _logprob_rows(fused) == _logprob_rows(eager)


def test_fused_layers_equal_eager_with_fp16_kv_cache(tiny_model_factory):
    """The fused layer's float16 cache write rounds like the eager path's Tensor.to(float16)."""
    model_dir = tiny_model_factory("LlamaConfig")
    fused, fused_model = _run(model_dir, False, kv_cache_dtype="fp16")
    eager, _ = _run(model_dir, True, kv_cache_dtype="fp16")
    assert fused_model.model._fused_layers.stack.num_layers() == len(fused_model.model.layers)
    assert _logprob_rows(fused) == _logprob_rows(eager)


def test_other_families_stay_eager(tiny_model_factory):
    _, model = _run(tiny_model_factory("GemmaConfig", head_dim=16), False)
    assert model.model._fused_layers is None
