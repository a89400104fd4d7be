"""Greedy outputs of the whole engine equal HF transformers token for token (fp32), across batch
shapes: mixed lengths, chunked prefill, prefix-cache hits, preemption."""

from __future__ import annotations

import random

from pagedllm import LLM, SamplingParams
from tests.hf_reference import hf_greedy, load_hf_model

MAX_TOKENS = 20


def _random_prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def _expected(model_dir: str, prompts: list[list[int]], max_tokens: int = MAX_TOKENS):
    hf = load_hf_model(model_dir)
    return [hf_greedy(hf, p, max_tokens) for p in prompts]


def _greedy(max_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _run(llm: LLM, prompts: list[list[int]], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    outputs = llm.generate(prompts, _greedy(max_tokens), use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


def _core(llm: LLM):
    return llm.llm_engine.engine_core.engine_core


def _assert_all_blocks_free(llm: LLM) -> None:
    core = _core(llm)
    manager = core.scheduler.kv_cache_manager
    assert not core.scheduler.has_unfinished_requests()
    assert manager.usage == 0.0, f"KV blocks still in use: {manager.usage}"


def test_mixed_lengths_match_hf(tiny_llama_dir, tiny_vocab):
    prompts = _random_prompts([1, 5, 17, 33, 64, 100], tiny_vocab)
    llm = LLM(tiny_llama_dir, kv_cache_memory="64MiB")
    assert _run(llm, prompts) == _expected(tiny_llama_dir, prompts)
    _assert_all_blocks_free(llm)


def test_chunked_prefill_matches_hf(tiny_llama_dir, tiny_vocab):
    # A 16-token budget splits every long prompt into several chunks, mixed with decodes.
    prompts = _random_prompts([70, 9, 45, 31], tiny_vocab, seed=1)
    llm = LLM(tiny_llama_dir, kv_cache_memory="64MiB", max_num_batched_tokens=16,
              enable_prefix_caching=False)
    assert _run(llm, prompts) == _expected(tiny_llama_dir, prompts)
    _assert_all_blocks_free(llm)


def test_prefix_cache_hits_match_hf(tiny_llama_dir, tiny_vocab):
    shared = _random_prompts([48], tiny_vocab, seed=2)[0]
    tails = _random_prompts([3, 7, 20, 1], tiny_vocab, seed=3)
    prompts = [shared + t for t in tails]
    llm = LLM(tiny_llama_dir, kv_cache_memory="64MiB")
    first = _run(llm, prompts[:1])
    rest = _run(llm, prompts[1:])  # each shares the first's 3 full blocks
    again = _run(llm, prompts)  # every prompt now hits its own cached blocks
    expected = _expected(tiny_llama_dir, prompts)
    assert first + rest == expected
    assert again == expected
    _assert_all_blocks_free(llm)


def test_prefix_cache_reports_hits(tiny_llama_dir, tiny_vocab):
    prompt = _random_prompts([40], tiny_vocab, seed=4)[0]
    llm = LLM(tiny_llama_dir, kv_cache_memory="64MiB")
    _run(llm, [prompt], max_tokens=2)
    outputs = llm.generate([prompt], _greedy(2), use_tqdm=False)
    # 40 tokens: 2 full blocks of 16 can be reused; the last token is always recomputed.
    assert outputs[0].num_cached_tokens == 32


def test_preemption_matches_hf(tiny_llama_dir, tiny_vocab):
    # 10 blocks of 16 tokens cannot hold 6 requests of ~60 tokens at once: requests get
    # preempted and recomputed, and must still produce the reference tokens.
    prompts = _random_prompts([30, 41, 25, 38, 33, 27], tiny_vocab, seed=5)
    llm = LLM(tiny_llama_dir, num_gpu_blocks_override=10, max_model_len=160,
              enable_prefix_caching=False)
    total_preemptions = 0
    engine = llm.llm_engine
    sp = _greedy(30)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, sp)
    results = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.outputs[0].token_ids
        total_preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    assert total_preemptions > 0, "the test must force preemption"
    expected = _expected(tiny_llama_dir, prompts, 30)
    assert [results[str(i)] for i in range(len(prompts))] == expected
    _assert_all_blocks_free(llm)


def test_preemption_with_prefix_caching_matches_hf(tiny_llama_dir, tiny_vocab):
    prompts = _random_prompts([30, 41, 25, 38], tiny_vocab, seed=6)
    llm = LLM(tiny_llama_dir, num_gpu_blocks_override=8, max_model_len=128,
              max_num_batched_tokens=32)
    assert _run(llm, prompts, 30) == _expected(tiny_llama_dir, prompts, 30)
    _assert_all_blocks_free(llm)
