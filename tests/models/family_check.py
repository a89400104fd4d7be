"""The check every model family passes: the whole engine's greedy tokens equal HF transformers'
(fp32) for a batch of mixed-length prompts whose prefill is chunked by a 16-token budget."""

from __future__ import annotations

import random

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.model_executor.model_loader import get_model
from pagedllm.model_executor.model_loader.config import load_model_config
from tests.hf_reference import hf_greedy, hf_logits, load_hf_model
from tests.model_executor.paged import PagedRunner

MAX_TOKENS = 16
PROMPT_LENGTHS = [1, 7, 23, 40]
"""Chunked by max_num_batched_tokens=16 into 1-3 pieces, decodes mixed in."""


def random_prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def assert_greedy_matches_hf(
    model_dir: str, lengths: list[int] = PROMPT_LENGTHS, max_tokens: int = MAX_TOKENS
) -> LLM:
    """Returns the engine that ran (for checks on how it ran)."""
    hf = load_hf_model(model_dir)
    prompts = random_prompts(lengths, hf.config.vocab_size)
    llm = LLM(model_dir, kv_cache_memory="64MiB", max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    expected = [hf_greedy(hf, p, max_tokens) for p in prompts]
    assert [o.outputs[0].token_ids for o in outputs] == expected
    return llm


def assert_engine_matches_hf(
    model_dir: str, lengths: list[int] = PROMPT_LENGTHS, max_tokens: int = MAX_TOKENS,
    reference_dir: str | None = None,
) -> LLM:
    """assert_greedy_matches_hf, then the same prompts again on the same engine: the second
    round reads the prompts' KV blocks from the prefix cache and must still equal HF.
    reference_dir: the HF model to compare with where transformers cannot load model_dir itself
    (the same weights under another architecture's names); default model_dir."""
    hf = load_hf_model(reference_dir or model_dir)
    prompts = random_prompts(lengths, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, max_tokens) for p in prompts]
    llm = LLM(model_dir, kv_cache_memory="64MiB", max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for round_ in range(2):
        outputs = llm.generate(prompts, params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outputs] == expected, f"round {round_}"
    assert sum(o.num_cached_tokens for o in outputs) > 0  # the second round hit the cache
    return llm


def assert_logits_match_hf(
    model_dir: str, length: int = 60, atol: float = 1e-4, reference_dir: str | None = None
) -> None:
    """Prefill logits of one prompt, every position (catches what greedy argmax may hide).
    reference_dir: as in assert_engine_matches_hf."""
    model = get_model(load_model_config(model_dir), "cpu")
    hf = load_hf_model(reference_dir or model_dir)
    (prompt,) = random_prompts([length], hf.config.vocab_size, seed=1)
    (ours,) = PagedRunner(model).step({0: prompt})
    torch.testing.assert_close(ours, hf_logits(hf, prompt), atol=atol, rtol=0)
