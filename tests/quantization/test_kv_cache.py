"""8-bit KV cache (--kv-cache-dtype int8|fp8): values + per-token-head scales round-trip within
quantization error, both attention backends read it like the float cache, the engine keeps its
greedy output, and the same memory holds more blocks."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM
from pagedllm.attention.ops.kv_quant import (
    KV_CACHE_DTYPES,
    kv_cache_head_size,
    load_kv,
    quantize_kv,
)
from pagedllm.attention.selector import BACKENDS
from tests.attention.test_backends import BLOCK_SIZE, CASES, NUM_BLOCKS, _batch
from tests.quantization.checkpoints import (
    assert_greedy_agrees,
    greedy_with_logprobs,
    random_prompts,
)

ROUND_TRIP_REL = {"int8": 1 / 127, "fp8": 1 / 16}
"""Largest error relative to the row's max |x|: half an int8 step, or e4m3's 3-bit mantissa."""


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_round_trip_within_quantization_error(kv_dtype):
    dtype = KV_CACHE_DTYPES[kv_dtype]
    torch.manual_seed(0)
    x = torch.randn(7, 3, 16) * torch.logspace(-3, 2, 7)[:, None, None]  # very different scales
    stored = quantize_kv(x, dtype).view(dtype)
    assert stored.shape == (7, 3, kv_cache_head_size(16, dtype))
    err = (load_kv(stored, torch.float32) - x).abs().amax(-1)
    assert (err <= x.abs().amax(-1) * ROUND_TRIP_REL[kv_dtype] + 1e-12).all()


@pytest.mark.parametrize("backend_name", BACKENDS.names())
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_reads_quantized_cache(backend_name, kv_dtype, case):
    """Attention over an 8-bit cache equals attention over the float cache holding the same
    (dequantized) K/V."""
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_size = 8, 2, 16
    dtype = KV_CACHE_DTYPES[kv_dtype]
    common = _batch(*CASES[case])
    tokens = common.num_actual_tokens
    q = torch.randn(tokens, num_heads, head_size)
    k = torch.randn(tokens, num_kv_heads, head_size)
    v = torch.randn(tokens, num_kv_heads, head_size)
    backend = BACKENDS.get(backend_name)
    shape = backend.get_kv_cache_shape(NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_size)
    earlier = torch.randn(shape)  # K/V of earlier steps
    quantized = quantize_kv(earlier.view(-1, num_kv_heads, head_size), dtype)
    quantized = quantized.view(*shape[:-1], -1).view(dtype)
    # the float cache holds exactly what the 8-bit one decodes to, this step's K/V included
    float_cache = load_kv(quantized, torch.float32)
    k_ref, v_ref = (load_kv(quantize_kv(t, dtype).view(dtype), torch.float32) for t in (k, v))
    outputs = []
    for cache, key, value in ((float_cache, k_ref, v_ref), (quantized, k, v)):
        impl = backend.get_impl_cls()(num_heads, head_size, head_size**-0.5, num_kv_heads)
        metadata = backend.get_builder_cls()().build(common)
        outputs.append(impl.forward(q, key, value, cache, metadata))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_engine_with_8bit_kv_cache_keeps_greedy_output(tiny_llama_dir, kv_dtype):
    prompts = random_prompts([3, 17, 40, 70], seed=11)
    kwargs = dict(kv_cache_memory="1MiB", max_model_len=256, max_num_batched_tokens=32)
    full = LLM(tiny_llama_dir, **kwargs)
    small = LLM(tiny_llama_dir, kv_cache_dtype=kv_dtype, **kwargs)
    # tiny model: head_dim 16 -> 64 bytes per head in fp32, 16 + 4 in 8 bits: 3.2x the blocks
    blocks = [llm.llm_engine.engine_core.engine_core.num_blocks for llm in (full, small)]
    assert blocks[1] == pytest.approx(blocks[0] * 64 / 20, abs=1)
    agree = assert_greedy_agrees(
        greedy_with_logprobs(small, prompts, 30), greedy_with_logprobs(full, prompts, 30),
        # e4m3 keeps 3 mantissa bits: more near-ties flip than with int8
        min_prompts_fully_equal=2 if kv_dtype == "int8" else 1,
    )
    print(f"{kv_dtype} KV cache: blocks {blocks[0]} -> {blocks[1]}; tokens in agreement {agree}")


def test_engine_with_fp16_kv_cache_keeps_greedy_output(tiny_llama_dir):
    """--kv-cache-dtype fp16 (llama.cpp's default cache precision): twice the blocks in the same
    memory, and the greedy output of the float32 cache."""
    prompts = random_prompts([3, 17, 40, 70], seed=11)
    kwargs = dict(kv_cache_memory="1MiB", max_model_len=256, max_num_batched_tokens=32)
    full = LLM(tiny_llama_dir, **kwargs)
    half = LLM(tiny_llama_dir, kv_cache_dtype="fp16", **kwargs)
    blocks = [llm.llm_engine.engine_core.engine_core.num_blocks for llm in (full, half)]
    assert blocks[1] == 2 * blocks[0]
    agree = assert_greedy_agrees(
        greedy_with_logprobs(half, prompts, 30), greedy_with_logprobs(full, prompts, 30),
        min_prompts_fully_equal=3,
    )
    print(f"fp16 KV cache: blocks {blocks[0]} -> {blocks[1]}; tokens in agreement {agree}")
