"""The offline API's other entry points with adapters: beam search against transformers' beam
search on PEFT's merged model, and embed's vLLM signature (adapters refused there)."""

from __future__ import annotations

import pytest

from pagedllm import LLM, BeamSearchParams
from tests.hf_reference import hf_beam_search
from tests.lora.adapters import merged_hf_model
from tests.models.family_check import random_prompts


def test_beam_search_under_adapters_matches_merged_hf(lora_setup):
    """Three prompts, two under adapters and one on the base, searched together (each step
    batches every prompt's beams, so adapters and the base mix in one forward)."""
    base, loras = lora_setup("llama")
    choice = [loras["all7"], None, loras["mlp_rslora"]]
    prompts = random_prompts([7, 12, 5], 384, seed=31)
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True, max_loras=2, max_lora_rank=16)
    params = BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True)
    outputs = llm.beam_search([{"prompt_token_ids": p} for p in prompts], params,
                              lora_request=choice)
    for lora, prompt, output in zip(choice, prompts, outputs):
        model = merged_hf_model(base, lora and lora.lora_path)
        expected = hf_beam_search(model, prompt, 3, 6, 1.0, None)
        assert [s.token_ids for s in output.sequences] == expected, lora
    base_only = llm.beam_search([{"prompt_token_ids": prompts[0]}], params)[0]
    assert [s.token_ids for s in base_only.sequences] != \
        [s.token_ids for s in outputs[0].sequences]  # the adapter changed the search


def test_beam_search_refuses_a_bad_adapter_before_running(lora_setup, tmp_path):
    from pagedllm import LoRARequest

    base, _ = lora_setup("llama")
    llm = LLM(base, kv_cache_memory="16MiB", enable_lora=True)
    with pytest.raises(ValueError, match="adapter_config.json"):
        llm.beam_search([[5, 6, 7]], BeamSearchParams(beam_width=2, max_tokens=2),
                        lora_request=LoRARequest("ghost", 1, str(tmp_path / "nope")))
    assert not llm.llm_engine.has_unfinished_requests()


def test_embed_takes_lora_request_and_refuses_it(lora_setup):
    base, loras = lora_setup("llama")
    llm = LLM(base, kv_cache_memory="16MiB", task="embed")
    with pytest.raises(ValueError, match="not enabled"):
        llm.embed([[5, 6, 7]], lora_request=loras["qv"])
    assert len(llm.embed([[5, 6, 7]], use_tqdm=False)[0].outputs.embedding) > 0
