"""Multi-LoRA through the whole offline engine: greedy tokens of every adapter equal HF's
merged model (PeftModel.merge_and_unload, fp32), with adapters and the base mixed in batches,
chunked prefill, fewer slots than adapters, preemption and prefix-cache hits."""

from __future__ import annotations

from collections import Counter

import pytest

from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.worker import fused_cpu_stack
from tests.engine_internals import engine_core
from tests.hf_reference import hf_greedy
from tests.lora.adapters import merged_hf_model
from tests.models.family_check import random_prompts

MAX_TOKENS = 8
NAMES = [None, "all7", "qv", "mlp_rslora", "ko"]


def _params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def _expected(base: str, lora: LoRARequest | None, prompt: list[int]) -> list[int]:
    return hf_greedy(merged_hf_model(base, lora and lora.lora_path), prompt, MAX_TOKENS)


def _lora_manager(llm: LLM):
    return engine_core(llm).executor.driver_worker.model_runner.lora


def _run(llm: LLM, prompts, loras, lora_totals: Counter | None = None):
    """Generate step by step; return (token ids per prompt, preemptions, cached tokens).
    lora_totals: adds up the steps' LoRAStats counters."""
    engine = llm.llm_engine
    for i, (prompt, lora) in enumerate(zip(prompts, loras)):
        engine.add_request(str(i), prompt, _params(), lora_request=lora)
    outputs, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[int(out.request_id)] = out
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
        if lora_totals is not None and engine.last_stats and engine.last_stats.lora_stats:
            stats = engine.last_stats.lora_stats
            lora_totals.update(loads=stats.num_loads, cpu=stats.num_cpu_evictions,
                               slot=stats.num_slot_evictions)
    ordered = [outputs[i] for i in range(len(prompts))]
    return ([o.outputs[0].token_ids for o in ordered], preemptions,
            [o.num_cached_tokens for o in ordered])


@pytest.mark.parametrize("family,enforce_eager,mlp_block_rows",
                         [("llama", False, None), ("llama", True, None), ("qwen2", False, None),
                          ("llama", False, 3)])  # fmt: skip
def test_mixed_batch_matches_merged_hf(lora_setup, monkeypatch, family, enforce_eager,
                                       mlp_block_rows):
    """4 adapters and the base in one batch, prefill chunked by a 16-token budget; through the
    fused C++ decoder stack (LoRA inside it) and eagerly (LoRALinear modules); mlp_block_rows:
    the fused MLP in blocks of that many rows (each block's adapter slots its own)."""
    if mlp_block_rows is not None:
        monkeypatch.setattr(fused_cpu_stack, "mlp_block_rows", lambda _: mlp_block_rows)
    base, loras = lora_setup(family)
    choice = [None if n is None else loras[n] for n in NAMES] * 2
    prompts = random_prompts([3, 17, 30, 9, 24, 40, 5, 12, 21, 33], 384, seed=7)
    llm = LLM(base, kv_cache_memory="16MiB", max_num_batched_tokens=16, enable_lora=True,
              max_loras=4, max_lora_rank=16, enforce_eager=enforce_eager)
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name == ("eager" if enforce_eager else "fused_cpu_stack")
    got, _, _ = _run(llm, prompts, choice)
    expected = [_expected(base, lora, p) for lora, p in zip(choice, prompts)]
    assert got == expected
    # the adapters do change the model (else the comparison above proves nothing)
    for lora, prompt, tokens in zip(choice, prompts, got):
        if lora is not None:
            assert tokens != _expected(base, None, prompt), lora.lora_name


def test_fewer_slots_than_adapters(lora_setup):
    """max_loras=2 with 4 adapters: the scheduler holds requests back, slots are evicted and
    refilled from the CPU LRU (3 kept) or disk, and every token is still right."""
    base, loras = lora_setup("llama")
    choice = [loras[n] for n in NAMES[1:]] * 3
    prompts = random_prompts([6, 11, 19, 4, 14, 8, 22, 10, 16, 5, 13, 7], 384, seed=3)
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2, max_cpu_loras=3,
              max_num_seqs=3)
    totals: Counter = Counter()
    got, _, _ = _run(llm, prompts, choice, totals)
    assert got == [_expected(base, lora, p) for lora, p in zip(choice, prompts)]
    counters = _lora_manager(llm).counters
    assert counters.slot_evictions > 0
    assert counters.drops > 0 and counters.loads >= 4 and counters.step_loads == 0
    # the stats the metrics export (an eviction frees the slot too: no slot eviction for it)
    assert totals == Counter(loads=counters.loads, cpu=counters.drops,
                             slot=counters.slot_evictions)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_preemption_matches_merged_hf(lora_setup, family):
    base, loras = lora_setup(family)
    choice = [None if n is None else loras[n] for n in NAMES] + [loras["all7"]]
    prompts = random_prompts([30, 41, 25, 38, 33, 27], 384, seed=5)
    llm = LLM(base, num_gpu_blocks_override=10, max_model_len=160, enable_prefix_caching=False,
              enable_lora=True, max_loras=4)
    engine_params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    engine = llm.llm_engine
    for i, (prompt, lora) in enumerate(zip(prompts, choice)):
        engine.add_request(str(i), prompt, engine_params, lora_request=lora)
    got, preemptions = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[int(out.request_id)] = out.outputs[0].token_ids
        preemptions += engine.last_stats.num_preemptions if engine.last_stats else 0
    assert preemptions > 0, "10 blocks of 16 tokens must force preemption"
    for i, (lora, prompt) in enumerate(zip(choice, prompts)):
        model = merged_hf_model(base, lora and lora.lora_path)
        assert got[i] == hf_greedy(model, prompt, 30), i


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prefix_cache_is_keyed_by_adapter(lora_setup, family):
    """The same 48-token prompt under the base, then adapters: no hit across adapters (a hit
    would reuse another model's K/V and change the tokens), hits within one adapter."""
    base, loras = lora_setup(family)
    (prompt,) = random_prompts([48], 384, seed=11)
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=4)
    for lora in [None, loras["all7"], loras["qv"], loras["ko"]]:
        tokens, _, cached = _run(llm, [prompt], [lora])
        assert cached == [0], lora
        assert tokens == [_expected(base, lora, prompt)], lora
    tokens, _, cached = _run(llm, [prompt, prompt], [loras["qv"], None])
    assert cached == [32, 32]  # (the last token is always computed: 2 whole blocks hit)
    assert tokens == [_expected(base, loras["qv"], prompt), _expected(base, None, prompt)]


def test_adapter_changes_under_a_reused_name_are_separate(lora_setup):
    """Prefix keys mix the adapter's id: a new id for the same name shares no blocks."""
    base, loras = lora_setup("llama")
    (prompt,) = random_prompts([32], 384, seed=12)
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2)
    _run(llm, [prompt], [loras["all7"]])
    other = LoRARequest("all7", 99, loras["ko"].lora_path)
    tokens, _, cached = _run(llm, [prompt], [other])
    assert cached == [0]
    assert tokens == [_expected(base, loras["ko"], prompt)]
