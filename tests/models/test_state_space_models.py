"""Models with Mamba layers on the per-request state cache, against transformers' fp32 slow path
(a sequential scan, no mamba kernels), through the whole engine.

Jamba (Mamba layers among attention layers, MoE every other layer): greedy tokens of a mixed
batch whose prefills are chunked (each chunk continues its request's state), the same under
preemption (a small KV budget: states dropped and recomputed) and with fewer state slots than
requests, prompt logprobs within tolerance, clear refusals. Then Mamba, Falcon-Mamba, Mamba2,
Bamba and Granite 4.0 hybrid on the same machinery. Every state slot is free at the end.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tests.engine_internals import engine_core
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts

# 4 layers: mamba+dense, attention+MoE, mamba+dense, attention+MoE
JAMBA = dict(
    num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
    expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8,
    mamba_d_conv=4, mamba_expand=2, intermediate_size=64,
)  # fmt: skip
MAMBA = dict(num_hidden_layers=2, state_size=8, num_attention_heads=None,
             num_key_value_heads=None, max_position_embeddings=None)
MAMBA2 = dict(num_hidden_layers=2, num_heads=8, head_dim=16, n_groups=2, state_size=8,
              chunk_size=16, num_attention_heads=None, num_key_value_heads=None,
              max_position_embeddings=None)
BAMBA = dict(
    num_hidden_layers=3, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16,
    mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=16, intermediate_size=64,
)  # fmt: skip
GRANITE_HYBRID = {
    "rope_moe": dict(
        num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"], mamba_n_heads=8,
        mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=16,
        intermediate_size=32, shared_intermediate_size=48, num_local_experts=4,
        num_experts_per_tok=2, embedding_multiplier=2.0, logits_scaling=3.0,
        residual_multiplier=0.5, attention_multiplier=0.3, position_embedding_type="rope"),
    "nope_dense": dict(
        num_hidden_layers=2, layer_types=["attention", "mamba"], mamba_n_heads=4,
        mamba_d_head=32, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16,
        shared_intermediate_size=48, num_local_experts=0, residual_multiplier=0.7,
        attention_multiplier=0.2, position_embedding_type=None),
}  # fmt: skip
LENGTHS = [1, 7, 23, 40]
"""Chunked by max_num_batched_tokens=16 into 1-3 pieces, decodes mixed in."""
MAX_TOKENS = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """transformers' reference runs at one thread, as the engines here do (PAGEDLLM_NUM_THREADS):
    before any engine set it, torch's default thread count made each of its tiny forwards ~30x
    slower on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def jamba_dir(tiny_model_factory) -> str:
    return tiny_model_factory("JambaConfig", **JAMBA)


@pytest.fixture(scope="module")
def reference(jamba_dir):
    hf = load_hf_model(jamba_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    return prompts, [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]


def _generate(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _assert_all_free(llm: LLM) -> None:
    scheduler = engine_core(llm).scheduler
    assert scheduler.state_slots is not None
    assert scheduler.state_slots.num_free == scheduler.state_slots.num_slots
    assert not scheduler.state_slots.slot_of
    assert scheduler.kv_cache_manager.num_free_blocks == scheduler.kv_cache_manager.num_blocks


@pytest.fixture(scope="module")
def engine(jamba_dir):
    """One engine for the tests that need no special budget; returns it and its start-up log."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("pagedllm.config.state_cache")
    logger.addHandler(handler)  # (pagedllm's loggers do not propagate to the root)
    try:
        llm = LLM(jamba_dir, kv_cache_memory="8MiB", max_num_batched_tokens=16, max_num_seqs=8)
    finally:
        logger.removeHandler(handler)
    return llm, records


def test_mixed_batch_chunked_prefill_matches_hf(engine, reference):
    llm, log = engine
    prompts, expected = reference
    assert any("prefix caching disabled" in line for line in log)
    assert _generate(llm, prompts) == expected
    # a second round: no prefix hit (states cannot be restored), the same tokens
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert sum(o.num_cached_tokens for o in outputs) == 0
    _assert_all_free(llm)
    assert engine_core(llm).scheduler.state_slots.num_slots == 8  # one per max_num_seqs


def test_prompt_logprobs_match_hf(engine, jamba_dir, reference):
    """Every prompt position's top-5 log-probabilities, its prefill split over 3 chunks."""
    llm, _ = engine
    prompts, _ = reference
    prompt = prompts[-1]
    hf = load_hf_model(jamba_dir)
    with torch.inference_mode():
        ref = torch.log_softmax(hf(input_ids=torch.tensor([prompt])).logits[0].float(), -1)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=5)
    (out,) = llm.generate([prompt], params, use_tqdm=False)
    rows = out.prompt_logprobs[1:]
    assert len(rows) == len(prompt) - 1
    for position, row in enumerate(rows):
        for token_id, logprob in row.items():
            assert math.isclose(logprob.logprob, float(ref[position, token_id]), abs_tol=1e-4)
        top5 = set(torch.topk(ref[position], 5).indices.tolist())
        assert top5 <= set(row)
    _assert_all_free(llm)


def test_preemption_and_few_slots_match_hf(jamba_dir, reference):
    """A KV budget of 4 blocks of 16 for 4 requests of 13-52 tokens (10 blocks in all):
    requests are preempted (their state slots freed with their blocks) and recomputed from
    position 0; max_num_seqs=3: three state slots for four requests."""
    prompts, expected = reference
    llm = LLM(jamba_dir, num_gpu_blocks_override=4, max_model_len=56,
              max_num_batched_tokens=16, max_num_seqs=3)
    scheduler = engine_core(llm).scheduler
    assert scheduler.state_slots.num_slots == 3
    preempted: list[str] = []
    preempt = scheduler._preempt

    def counting_preempt(request, step):
        preempted.append(request.request_id)
        preempt(request, step)

    scheduler._preempt = counting_preempt
    assert _generate(llm, prompts) == expected
    assert preempted, "the small KV budget was meant to preempt"
    _assert_all_free(llm)


def test_state_budget_refused_clearly(jamba_dir):
    # 4096 states of 11 KiB do not fit 1 MiB at all
    with pytest.raises(ValueError, match="state cache of max_num_seqs=4096 sequences takes"):
        LLM(jamba_dir, kv_cache_memory="1MiB", max_num_seqs=4096)
    # 8 states (88 KiB) fit 300 KiB, but then 512 tokens of KV (256 KiB) do not
    with pytest.raises(ValueError, match="fewer than max_model_len=512.*max_num_seqs=8"):
        LLM(jamba_dir, kv_cache_memory=300 * 1024, max_num_seqs=8)


def test_speculative_decoding_refused(jamba_dir):
    with pytest.raises(ValueError, match="cannot roll back"):
        LLM(jamba_dir, kv_cache_memory="8MiB",
            speculative_config={"method": "ngram", "num_speculative_tokens": 2})


@pytest.mark.parametrize("config_cls, overrides", [("MambaConfig", MAMBA),
                                                    ("FalconMambaConfig", MAMBA),
                                                    ("Mamba2Config", MAMBA2)])
def test_mamba_matches_hf(tiny_model_factory, config_cls, overrides):
    """Plain Mamba, Falcon-Mamba and Mamba2 (no attention: the KV blocks hold 0 bytes) on the
    same state cache: greedy tokens of the mixed, chunked batch, three slots for four requests."""
    model_dir = tiny_model_factory(config_cls, **overrides)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [_hf_greedy_uncached(hf, p, MAX_TOKENS) for p in prompts]
    llm = LLM(model_dir, max_model_len=64, kv_cache_memory="1MiB", max_num_batched_tokens=16,
              max_num_seqs=3)
    assert engine_core(llm).scheduler.state_slots.num_slots == 3
    assert _generate(llm, prompts) == expected
    _assert_all_free(llm)


@torch.inference_mode()
def _hf_greedy_uncached(hf, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy by re-running the whole sequence each step (transformers' MambaForCausalLM
    returns its cache as `cache`, which hf_greedy's `past_key_values` does not carry)."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(int(hf(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_bamba_matches_hf(tiny_model_factory):
    """Bamba (Mamba2 layers: heads, groups, gated group norm; rotary attention at layer 1) on
    the same state cache: greedy tokens of the mixed, chunked batch, under a KV budget small
    enough to preempt. (The reference re-runs the whole sequence: transformers' Bamba restarts
    positions at 0 on a cached step unless position_ids are given.)"""
    model_dir = tiny_model_factory("BambaConfig", **BAMBA)
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [_hf_greedy_uncached(hf, p, MAX_TOKENS) for p in prompts]
    llm = LLM(model_dir, num_gpu_blocks_override=4, max_model_len=56,
              max_num_batched_tokens=16, max_num_seqs=3)
    assert _generate(llm, prompts) == expected
    _assert_all_free(llm)


@pytest.mark.parametrize("variant", list(GRANITE_HYBRID))
def test_granite_moe_hybrid_matches_hf(tiny_model_factory, variant):
    """Granite 4.0 hybrid (Mamba2 + attention with rotary or none, shared MLP with or without
    experts, Granite's multipliers): greedy tokens of the mixed, chunked batch."""
    model_dir = tiny_model_factory("GraniteMoeHybridConfig", **GRANITE_HYBRID[variant])
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [_hf_greedy_uncached(hf, p, MAX_TOKENS) for p in prompts]
    llm = LLM(model_dir, kv_cache_memory="4MiB", max_num_batched_tokens=16, max_num_seqs=4)
    assert _generate(llm, prompts) == expected
    _assert_all_free(llm)
