"""LoRA with n-gram speculative decoding: each verify row runs under its request's adapter, so
greedy output with drafts is the PEFT-merged model's, as without drafts (which
test_lora_engine.py checks against the same reference)."""

from __future__ import annotations

from pagedllm import LLM, SamplingParams
from pagedllm.metrics.stats import SpecDecodingStats
from tests.hf_reference import hf_greedy
from tests.lora.adapters import merged_hf_model
from tests.spec_decode.test_engine import SPEC, prompts

MAX_TOKENS = 24


def test_drafted_greedy_equals_merged_hf(lora_setup):
    base, loras = lora_setup("llama")
    choice = [loras["all7"], loras["ko"], None, loras["qv"]]
    token_prompts = prompts(384, count=len(choice))
    llm = LLM(base, max_model_len=256, kv_cache_memory="16MiB", enable_lora=True, max_loras=2,
              speculative_config=SPEC)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for i, (prompt, lora) in enumerate(zip(token_prompts, choice)):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params, lora_request=lora)
    got, spec = {}, SpecDecodingStats()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[int(out.request_id)] = out.outputs[0].token_ids
        stats = engine.last_stats and engine.last_stats.spec_decoding_stats
        if stats:
            spec.num_drafts += stats.num_drafts
            spec.num_accepted_tokens += stats.num_accepted_tokens
    assert spec.num_drafts > 0 and spec.num_accepted_tokens > 0, spec
    for i, (prompt, lora) in enumerate(zip(token_prompts, choice)):
        model = merged_hf_model(base, lora and lora.lora_path)
        assert got[i] == hf_greedy(model, prompt, MAX_TOKENS), i
