"""Suffix decoding through the engine on a tiny random Llama: greedy output equals decoding
without speculation token for token (batch, chunked prefill, preemption mid-draft), drafts are
verified, and a second run of the same prompts accepts more thanks to the cache of the first
run's outputs."""

from __future__ import annotations

import random

import pytest

from pagedllm import LLM
from pagedllm.metrics.stats import SpecDecodingStats
from tests.spec_decode.test_engine import greedy, trace
from tests.spec_decode.test_engine import run as run_engine

SPEC = {"method": "suffix", "num_speculative_tokens": 4, "disable_by_batch_size": None,
        "draft_token_cost": 0.1}


def run(llm: LLM, token_prompts, params, tag: str = "") -> tuple[list, SpecDecodingStats, int]:
    """test_engine.run, with the preemption count apart."""
    outs, stats = run_engine(llm, token_prompts, params, tag)
    return outs, stats, stats.num_preemptions  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine_kwargs", [
    {"kv_cache_memory": "32MiB"},
    {"kv_cache_memory": "32MiB", "max_num_batched_tokens": 16},  # chunked prefill, tight budget
    {"num_gpu_blocks_override": 16, "enable_prefix_caching": False},  # preemption
])
def test_greedy_with_suffix_drafts_equals_without(tiny_llama_dir, reference, engine_kwargs):
    token_prompts, params, expected = reference
    llm = LLM(tiny_llama_dir, max_model_len=256, speculative_config=SPEC, **engine_kwargs)
    for round_ in range(2):  # the second round also drafts from the first one's outputs
        outs, stats, preemptions = run(llm, token_prompts, params, tag=f"r{round_}-")
        assert [trace(o) for o in outs] == expected
        assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0, stats
        if "num_gpu_blocks_override" in engine_kwargs:
            assert preemptions > 0, "16 blocks of 16 tokens must force preemption"


def test_a_repeated_run_accepts_more_from_the_cache(tiny_llama_dir, tiny_vocab):
    rng = random.Random(7)  # prompts without repeats: little to draft from their own tokens
    token_prompts = [[rng.randrange(3, tiny_vocab) for _ in range(24)] for _ in range(4)]
    params = [greedy(max_tokens=40)] * len(token_prompts)
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=SPEC)
    first, stats1, _ = run(llm, token_prompts, params, tag="a")
    again, stats2, _ = run(llm, token_prompts, params, tag="b")
    assert [trace(o) for o in again] == [trace(o) for o in first]
    assert stats2.num_accepted_tokens > 2 * max(1, stats1.num_accepted_tokens), (stats1, stats2)
    no_cache = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
                   speculative_config={**SPEC, "suffix_decoding_max_cached_requests": 0})
    run(no_cache, token_prompts, params, tag="a")
    _, stats_off, _ = run(no_cache, token_prompts, params, tag="b")
    assert stats_off.num_accepted_tokens < stats2.num_accepted_tokens
