"""Mistral's sliding window through the whole engine: blocks wholly before the window are
released, so a long generation holds a bounded number of KV blocks (a model without a window
grows linearly), and greedy output still equals HF transformers' token for token, also when
released blocks are reused by other requests while still listed in their owners' block tables."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.attention.backend import CommonAttentionMetadata
from pagedllm.attention.selector import BACKENDS
from pagedllm.utils.math import cdiv
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

WINDOW = 16
BLOCK_SIZE = 4
MAX_TOKENS = 100
DECODE_BOUND = cdiv(WINDOW - 1, BLOCK_SIZE) + 1
"""Blocks a decoding request holds at most: those of positions n - WINDOW + 1 .. n."""


def _llm(model_dir: str, backend: str, **kwargs) -> LLM:
    return LLM(model_dir, block_size=BLOCK_SIZE, max_model_len=256, attention_backend=backend,
               **kwargs)


def _generate(llm: LLM, prompts: list[list[int]]) -> tuple[list[list[int]], int, int]:
    """Greedy outputs, the most KV blocks in use after any step, and the preemptions."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    outputs: dict[str, list[int]] = {}
    peak = preemptions = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        stats = engine.last_stats
        peak = max(peak, stats.num_total_blocks - stats.num_free_blocks)
        preemptions += stats.num_preemptions
    return [outputs[str(i)] for i in range(len(prompts))], peak, preemptions


@pytest.mark.parametrize("backend", ["torch_sdpa", "torch_ref"])
def test_long_generation_holds_bounded_blocks(tiny_model_factory, backend):
    windowed = tiny_model_factory("MistralConfig", sliding_window=WINDOW)
    full = tiny_model_factory("MistralConfig", sliding_window=None)  # same weights (same seed)
    hf = load_hf_model(windowed)
    (prompt,) = random_prompts([5], hf.config.vocab_size)

    llm = _llm(windowed, backend)
    assert llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager.sliding_window == 16
    (tokens,), peak, _ = _generate(llm, [prompt])
    assert tokens == hf_greedy(hf, prompt, MAX_TOKENS)
    assert peak == DECODE_BOUND  # 5 blocks, for 105 tokens

    (full_tokens,), full_peak, _ = _generate(_llm(full, backend), [prompt])
    assert full_peak >= (len(prompt) + MAX_TOKENS - 1) // BLOCK_SIZE  # ~26: linear
    assert full_tokens != tokens  # the window matters over this generation


def test_released_blocks_reused_by_other_requests(tiny_model_factory):
    # Without the window, 3 x ~120 tokens need ~90 blocks of 4: the 64-block cache would
    # preempt. With it, each request holds at most DECODE_BOUND blocks (its prefill: cdiv(20, 4)),
    # so released blocks are handed to the others while their owners' tables still list them.
    model_dir = tiny_model_factory("MistralConfig", sliding_window=WINDOW)
    hf = load_hf_model(model_dir)
    prompts = random_prompts([5, 9, 20], hf.config.vocab_size, seed=3)
    llm = _llm(model_dir, "torch_sdpa", num_gpu_blocks_override=64)
    tokens, peak, preemptions = _generate(llm, prompts)
    assert tokens == [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert preemptions == 0 and peak <= 3 * DECODE_BOUND


@pytest.mark.parametrize("backend", ["torch_sdpa", "torch_ref"])
def test_stale_keys_outside_the_window_weigh_exactly_zero(backend):
    """What makes releasing safe: a block before the window that another request overwrote
    (finite values) changes nothing, bit for bit, for decodes and prefill chunks alike."""
    cls = BACKENDS.get(backend)
    heads, kv_heads, head_size, num_blocks = 4, 2, 8, 16
    impl = cls.get_impl_cls()(heads, head_size, head_size**-0.5, kv_heads, WINDOW, None)
    torch.manual_seed(0)
    cache = torch.randn(cls.get_kv_cache_shape(num_blocks, BLOCK_SIZE, kv_heads, head_size))
    # Request 0 decodes position 29: reads keys 14..29, not its blocks 0 and 1 (positions 0..7).
    # Request 1 computes positions 22..25: reads keys 7..25, not its block 8 (positions 0..3).
    seq_lens, num_query = [30, 26], [1, 4]
    table = torch.tensor([list(range(8)), list(range(8, 15)) + [0]], dtype=torch.int32)

    def run(kv_cache: torch.Tensor) -> torch.Tensor:
        md = _metadata(seq_lens, num_query, table)
        q = torch.randn(sum(num_query), heads, head_size,
                        generator=torch.Generator().manual_seed(1))
        k = torch.randn(sum(num_query), kv_heads, head_size,
                        generator=torch.Generator().manual_seed(2))
        builder = cls.get_builder_cls()()
        return impl.forward(q, k, k.clone(), kv_cache, builder.build(md))

    expected = run(cache.clone())
    stale = cache.clone()
    for block in (0, 1, 8):  # overwritten by "other requests", finite
        stale[:, block] = 1e4 * torch.randn_like(stale[:, block])
    assert torch.equal(run(stale), expected)


def _metadata(seq_lens: list[int], num_query: list[int], table: torch.Tensor):
    query_start = [0]
    for n in num_query:
        query_start.append(query_start[-1] + n)
    positions = [p for s, n in zip(seq_lens, num_query) for p in range(s - n, s)]
    rows = [i for i, n in enumerate(num_query) for _ in range(n)]
    slots = [int(table[r, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
             for r, p in zip(rows, positions)]
    return CommonAttentionMetadata(
        num_actual_tokens=query_start[-1],
        query_start_loc=torch.tensor(query_start, dtype=torch.int32),
        query_start_loc_cpu=query_start,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        seq_lens_cpu=seq_lens,
        block_table=table,
        slot_mapping=torch.tensor(slots, dtype=torch.long),
        max_query_len=max(num_query),
        max_seq_len=max(seq_lens),
        block_size=BLOCK_SIZE,
    )
