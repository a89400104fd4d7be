"""Batch invariance: a request's greedy tokens, and the logprob of each, are the same bits whatever
the engine does around it: alone or inside batches of 2..64 mixed prompts, cold or after a
prefix-cache hit, whole or in 24-token prefill chunks, with or without a preemption.

Logprobs are compared for float equality, not only tokens: any difference in the numbers a
token went through (a matmul's reduction order, activation rounding that depends on the row
count, an attention sum split by the tile) shows there long before it flips a greedy choice.
Checked on the default paths of the real models (SmolLM2 Q4_1 and Gemma 3 270M Q4_K_M GGUFs)
and on tiny random models in float32, int8, int4 (int16 and int8 activations), AWQ and GPTQ,
with fp16, int8 and fp8 KV caches, with a sliding window, and Gemma 2/3 (sandwich norms, GeGLU,
soft caps, local/global layers).
"""

from __future__ import annotations

import random

import pytest

from pagedllm import LLM, SamplingParams
from tests.models.test_gemma import VARIANTS as GEMMA_VARIANTS
from tests.quantization.checkpoints import write_awq_checkpoint, write_gptq_checkpoint

MAX_TOKENS = 6
BATCH_SIZES = (2, 7, 23)
"""Batches drawn again (after the whole set ran together) from the prefix cache."""

Trace = tuple[tuple[int, ...], tuple[float, ...]]
"""A completion's token ids and each token's logprob."""


def mixed_prompts(vocab: int, count: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of 1..110 tokens; every third starts with the same 40 tokens (a shared
    system prompt: prefix-cache hits within and across batches)."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(40)]
    prompts = []
    for i in range(count):
        tail = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 70))]
        prompts.append(shared + tail if i % 3 == 0 else tail)
    return prompts


def _params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)


def _trace(completion) -> Trace:
    ids = tuple(completion.token_ids)
    return ids, tuple(step[t].logprob for step, t in zip(completion.logprobs, ids))


def _generate(llm: LLM, prompts: list[list[int]]) -> tuple[list[Trace], int]:
    """The traces and the prompt tokens the prefix cache served."""
    outputs = llm.generate(prompts, _params(), use_tqdm=False)
    return [_trace(o.outputs[0]) for o in outputs], sum(o.num_cached_tokens for o in outputs)


def _generate_counting_preemptions(llm: LLM, prompts: list[list[int]]) -> tuple[list[Trace], int]:
    engine = llm.llm_engine
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, _params())
    finished, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[int(out.request_id)] = _trace(out.outputs[0])
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    return [finished[i] for i in range(len(prompts))], preemptions


def assert_batch_invariant(model: str, prompts: list[list[int]], **engine_kwargs) -> None:
    kwargs = dict(max_model_len=128, **engine_kwargs)
    # 8 blocks of 16 tokens hold any one of these requests (at most 110 + 6 tokens) but only one
    # or two at a time: alone, each runs undisturbed; all together, they preempt each other
    small = LLM(model, num_gpu_blocks_override=8, enable_prefix_caching=False, **kwargs)
    alone = [_generate(small, [p])[0][0] for p in prompts]
    got, preemptions = _generate_counting_preemptions(small, prompts)
    assert preemptions > 0, "the test must force preemption"
    assert got == alone, "requests preempted and recomputed"
    del small

    cached = LLM(model, kv_cache_memory="64MiB", enable_prefix_caching=True, **kwargs)
    together, _ = _generate(cached, prompts)
    assert together == alone, "a batch of all prompts"
    start = 0
    for size in BATCH_SIZES:
        got, hits = _generate(cached, prompts[start : start + size])
        assert hits > 0, "the test must hit the prefix cache"
        assert got == alone[start : start + size], f"a batch of {size} after prefix-cache hits"
        start += size
    del cached

    # 24-token chunks: prompt chunks that end inside a 16-token KV block, beside decodes
    chunked = LLM(model, kv_cache_memory="64MiB", enable_prefix_caching=False,
                  max_num_batched_tokens=24, **kwargs)  # fmt: skip
    assert _generate(chunked, prompts)[0] == alone, "24-token prefill chunks"


@pytest.mark.gguf
@pytest.mark.slow
def test_smollm2_q4_1_is_batch_invariant(smollm2_gguf_path):
    assert_batch_invariant(smollm2_gguf_path, mixed_prompts(49152, 64))


@pytest.mark.gguf
@pytest.mark.slow
def test_gemma3_270m_q4_k_m_is_batch_invariant(gemma3_270m_gguf_path):
    # 32: the batch sizes drawn after the whole set (2 + 7 + 23) use every prompt once
    assert_batch_invariant(gemma3_270m_gguf_path, mixed_prompts(262144, 32))


@pytest.mark.parametrize(
    "variant",
    ["float32", "bfloat16", "fp16-kv", "int8-kv", "fp8-kv", "int8", "int4", "int4-int8act",
     "awq", "gptq", "sliding-window", "gemma2", "gemma3"],
)  # fmt: skip
def test_tiny_models_are_batch_invariant(
    variant, tiny_llama_dir, tiny_model_factory, tiny_vocab, tmp_path
):
    model, kwargs = tiny_llama_dir, {}
    if variant in ("int8", "int4"):
        kwargs["quantization"] = variant
    elif variant == "int4-int8act":  # --quantized-activation-dtype int8
        kwargs.update(quantization="int4", quantized_activation_dtype="int8")
    elif variant == "bfloat16":  # bf16 weights widened by the kernels (compute float32)
        kwargs["dtype"] = variant
    elif variant.endswith("-kv"):
        kwargs["kv_cache_dtype"] = variant.removesuffix("-kv")
    elif variant == "awq":
        model = write_awq_checkpoint(tiny_llama_dir, str(tmp_path))[0]
    elif variant == "gptq":
        model = write_gptq_checkpoint(tiny_llama_dir, str(tmp_path), act_order=True)[0]
    elif variant == "sliding-window":  # Mistral, a 24-token window: most prompts exceed it
        model = tiny_model_factory("MistralConfig", sliding_window=24)
    elif variant.startswith("gemma"):  # the fused stack's sandwich block, GeGLU, soft caps
        config_cls, overrides = GEMMA_VARIANTS[variant]
        model = tiny_model_factory(config_cls, **{**overrides, "sliding_window": 24})
    assert_batch_invariant(model, mixed_prompts(tiny_vocab, 64), **kwargs)
