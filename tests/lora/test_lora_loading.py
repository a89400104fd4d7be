"""Adapters load off the step loop (a background read the scheduler waits for), and unloading
frees the worker's CPU copy and slot."""

from __future__ import annotations

import threading

from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.request import RequestStatus
from tests.engine_internals import engine_core
from tests.hf_reference import hf_greedy
from tests.lora.adapters import merged_hf_model
from tests.models.family_check import random_prompts

EMPTY = {"cpu": [], "loading": [], "slots": []}


def _manager(llm: LLM):
    return engine_core(llm).executor.driver_worker.model_runner.lora


def _params(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def test_steps_go_on_while_an_adapter_loads(lora_setup):
    """The adapter's read blocks (a gate the test holds) while the base request decodes step
    after step; once the read finishes, the adapter's request runs and gives the merged
    model's tokens, and no step ever read an adapter itself."""
    base, loras = lora_setup("llama")
    lora = loras["all7"]
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2)
    manager = _manager(llm)
    gate = threading.Event()
    read = manager.read_weights

    def gated_read(request: LoRARequest):
        assert gate.wait(30), "the test never released the load"
        return read(request)

    manager.read_weights = gated_read
    engine, scheduler = llm.llm_engine, engine_core(llm).scheduler
    base_prompt, lora_prompt = random_prompts([9, 14], 384, seed=21)
    engine.add_request("lora", lora_prompt, _params(8), lora_request=lora)
    engine.add_request("base", base_prompt, _params(12))
    steps_during_load = 0
    while not gate.is_set():
        engine.step()
        steps_during_load += 1
        waiting = scheduler.requests["lora"]
        assert waiting.status == RequestStatus.WAITING and waiting.num_computed_tokens == 0
        assert manager.resident["loading"] == [lora.lora_int_id]
        if scheduler.requests["base"].num_output_tokens >= 6:
            gate.set()  # the base request decoded 6 tokens while the read was held
        assert steps_during_load < 100
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out.outputs[0].token_ids
    assert outputs["lora"] == hf_greedy(merged_hf_model(base, lora.lora_path), lora_prompt, 8)
    assert outputs["base"] == hf_greedy(merged_hf_model(base, None), base_prompt, 12)
    assert manager.counters.loads == 1 and manager.counters.step_loads == 0


def test_unload_frees_the_cpu_copy_and_slot(lora_setup):
    """20 adapters loaded, used and unloaded one after another: each gives its merged model's
    tokens, and after each unload the worker holds nothing (no CPU copy, no slot)."""
    base, loras = lora_setup("llama")
    paths = [lora.lora_path for lora in loras.values()]
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2, max_cpu_loras=3)
    manager, residency = _manager(llm), engine_core(llm).scheduler.lora_residency
    (prompt,) = random_prompts([10], 384, seed=22)
    for i in range(20):
        lora = LoRARequest(f"adapter{i}", 100 + i, paths[i % len(paths)])
        out = llm.generate([prompt], _params(4), use_tqdm=False, lora_request=lora)
        assert out[0].outputs[0].token_ids == hf_greedy(
            merged_hf_model(base, lora.lora_path), prompt, 4), i
        assert manager.resident == {"cpu": [lora.lora_int_id], "loading": [],
                                    "slots": [lora.lora_int_id]}
        assert llm.llm_engine.remove_lora(lora.lora_int_id)
        assert manager.resident == EMPTY and not residency.entries
    assert not llm.llm_engine.remove_lora(100)  # already gone
    assert manager.counters.loads == 20 and manager.counters.drops == 20


def test_a_failed_load_ends_its_requests_only(lora_setup):
    """An adapter whose read fails (the files changed after the request was checked): its
    requests end with finish_reason "abort" and the reason; the others run, and a later
    request loads the adapter again."""
    base, loras = lora_setup("llama")
    lora = loras["qv"]
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2)
    manager = _manager(llm)
    read = manager.read_weights

    def failing_read(request: LoRARequest):
        raise ValueError(f"LoRA {request.lora_name!r}: the adapter went away")

    manager.read_weights = failing_read
    (prompt,) = random_prompts([9], 384, seed=23)
    failed, plain = llm.generate([prompt, prompt], _params(4), use_tqdm=False,
                                 lora_request=[lora, None])
    assert failed.outputs[0].finish_reason == "abort"
    assert "the adapter went away" in str(failed.outputs[0].stop_reason)
    assert plain.outputs[0].token_ids == hf_greedy(merged_hf_model(base, None), prompt, 4)
    manager.read_weights = read
    (again,) = llm.generate([prompt], _params(4), use_tqdm=False, lora_request=lora)
    assert again.outputs[0].token_ids == hf_greedy(merged_hf_model(base, lora.lora_path),
                                                   prompt, 4)
