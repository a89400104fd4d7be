"""N-gram speculative decoding through the engine on a tiny random Llama: greedy output equals
decoding without speculation, token for token and logprob for logprob, across batch shapes,
chunked prefill, preemption mid-draft, prefix hits and max_tokens landing mid-draft; and the
drafts are really verified (acceptance counted)."""

from __future__ import annotations

import random

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.metrics.stats import SpecDecodingStats

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
        "disable_by_batch_size": None, "draft_token_cost": 0.1}
"""draft_token_cost fixed: measured at start-up (test_calibration.py) it depends on how busy the
machine is, and so would the draft lengths and the acceptance counts these tests assert."""


def prompts(vocab: int, count: int = 5) -> list[list[int]]:
    """Prompts that repeat themselves, so lookups find something to draft."""
    rng = random.Random(0)
    out = []
    for i in range(count):
        motif = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 8))]
        out.append((motif * 12)[: 20 + 9 * i])
    return out


def run(llm: LLM, token_prompts, params, tag: str = "") -> tuple[list, SpecDecodingStats]:
    """Every prompt through the engine at once; the finished outputs in prompt order and the
    spec decoding counters summed over the steps (plus .num_preemptions). Request ids are
    prefixed by `tag` (a request id seen again would be taken for a resumed request)."""
    engine = llm.llm_engine
    for i, (prompt, p) in enumerate(zip(token_prompts, params)):
        engine.add_request(f"{tag}{i}", {"prompt_token_ids": prompt}, p)
    finished, total = {}, SpecDecodingStats()
    total.num_preemptions = 0  # type: ignore[attr-defined]
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0]
        if engine.last_stats:
            total.num_preemptions += engine.last_stats.num_preemptions  # type: ignore[attr-defined]
        stats = engine.last_stats.spec_decoding_stats if engine.last_stats else None
        if stats is not None:
            total.num_drafts += stats.num_drafts
            total.num_draft_tokens += stats.num_draft_tokens
            total.num_accepted_tokens += stats.num_accepted_tokens
    return [finished[f"{tag}{i}"] for i in range(len(token_prompts))], total


def trace(completion) -> tuple:
    logprobs = [sorted((t, lp.logprob) for t, lp in e.items()) for e in completion.logprobs or []]
    return tuple(completion.token_ids), completion.finish_reason, str(logprobs)


def greedy(max_tokens=40, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=2, **kw)


@pytest.mark.parametrize("engine_kwargs", [
    {"kv_cache_memory": "32MiB"},
    {"kv_cache_memory": "32MiB", "max_num_batched_tokens": 16},  # chunked prefill, tight budget
    {"num_gpu_blocks_override": 16, "enable_prefix_caching": False},  # preemption
])
def test_greedy_with_drafts_equals_without(tiny_llama_dir, reference, engine_kwargs):
    token_prompts, params, expected = reference
    llm = LLM(tiny_llama_dir, max_model_len=256, speculative_config=SPEC, **engine_kwargs)
    for _ in range(2):  # the second round hits the prefix cache where it is on
        outs, stats = run(llm, token_prompts, params)
        assert [trace(o) for o in outs] == expected
        assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0, stats
        if "num_gpu_blocks_override" in engine_kwargs:
            assert stats.num_preemptions > 0, "16 blocks of 16 tokens must force preemption"


def test_each_request_alone_equals_the_batch(tiny_llama_dir, reference):
    token_prompts, params, expected = reference
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=SPEC)
    for prompt, p, want in zip(token_prompts, params, expected):
        outs, _ = run(llm, [prompt], [p])
        assert trace(outs[0]) == want


def test_requests_that_cannot_draft_share_the_batch(tiny_llama_dir, tiny_vocab):
    token_prompts = prompts(tiny_vocab, 4)
    params = [greedy(), greedy(structured_outputs={"regex": "[a-z]+"}),
              SamplingParams(temperature=0.9, seed=3, max_tokens=20),
              SamplingParams(temperature=0.5, seed=4, max_tokens=20)]
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    spec = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
               speculative_config=SPEC)
    want, _ = run(plain, token_prompts, params)
    got, stats = run(spec, token_prompts, params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_drafts > 0


def test_max_tokens_and_stop_land_mid_draft(tiny_llama_dir, reference):
    token_prompts, _, expected = reference
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=SPEC)
    for cut in (1, 2, 5, 7):
        outs, _ = run(llm, token_prompts[:2], [greedy(max_tokens=cut)] * 2)
        for out, want in zip(outs, expected):
            assert list(out.token_ids) == list(want[0][:cut]) and out.finish_reason == "length"
    # a stop token id in the middle of what would be an accepted draft
    stop_id = expected[0][0][12]
    outs, _ = run(llm, token_prompts[:1], [greedy(stop_token_ids=[stop_id])])
    first = list(expected[0][0]).index(stop_id)
    assert list(outs[0].token_ids) == list(expected[0][0][: first + 1])


def test_sampled_requests_draft_and_stay_in_the_vocabulary(tiny_llama_dir, tiny_vocab):
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              speculative_config=SPEC)
    params = [SamplingParams(temperature=0.3, max_tokens=40, ignore_eos=True)] * 3
    outs, stats = run(llm, prompts(tiny_vocab, 3), params)
    assert stats.num_drafts > 0
    assert all(len(o.token_ids) == 40 for o in outs)


def test_stop_strings_land_mid_draft(tiny_llama_dir, reference):
    token_prompts, _, _ = reference
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    spec = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
               speculative_config=SPEC)
    free, _ = run(plain, token_prompts[:2], [greedy()] * 2)
    for out in free:
        stop = out.text[len(out.text) // 2:][:3]  # a string from the middle of the answer
        params = [greedy(stop=[stop])]
        want, _ = run(plain, token_prompts[:1] if out is free[0] else token_prompts[1:2], params)
        got, _ = run(spec, token_prompts[:1] if out is free[0] else token_prompts[1:2], params)
        assert (got[0].text, got[0].finish_reason, got[0].stop_reason) == (
            want[0].text, "stop", stop)


@pytest.mark.parametrize("penalty", [
    {"repetition_penalty": 1.3}, {"frequency_penalty": 0.8}, {"presence_penalty": 1.5},
    {"min_tokens": 25, "stop_token_ids": [5, 6, 7]},
])
def test_penalties_and_min_tokens_count_the_drafts(tiny_llama_dir, tiny_vocab, penalty):
    """Each verify row sees the drafts before it as generated: the same tokens as one by one."""
    token_prompts = prompts(tiny_vocab, 3)
    params = [greedy(max_tokens=36, **penalty)] * 3
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    # single-token lookups: penalized outputs repeat themselves less
    spec = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
               speculative_config={**SPEC, "prompt_lookup_min": 1})
    want, _ = run(plain, token_prompts, params)
    got, stats = run(spec, token_prompts, params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_drafts > 0, "the penalized requests drafted"


@pytest.mark.parametrize("config_cls", ["Qwen2Config", "Qwen3Config"])
def test_other_families_verify_exactly(tiny_model_factory, tiny_vocab, config_cls):
    model = tiny_model_factory(config_cls)
    token_prompts = prompts(tiny_vocab, 4)
    params = [greedy(max_tokens=32)] * 4
    want, _ = run(LLM(model, kv_cache_memory="32MiB", max_model_len=256), token_prompts, params)
    got, stats = run(LLM(model, kv_cache_memory="32MiB", max_model_len=256,
                         speculative_config={**SPEC, "prompt_lookup_min": 1}),
                     token_prompts, params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_drafts > 0


def test_bad_words_hold_inside_drafts(tiny_llama_dir, reference):
    """A word the free output contains: banned whether its tokens come from drafts or not, and
    the same tokens as one-by-one decoding."""
    from tests.engine.test_allowed_and_bad_words import _bad_word_from

    token_prompts, _, expected = reference
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    spec = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
               speculative_config={**SPEC, "prompt_lookup_min": 1})
    word, window = _bad_word_from(plain.get_tokenizer(), list(expected[0][0]))
    params = [greedy(max_tokens=40, bad_words=[word])] * 2
    want, _ = run(plain, token_prompts[:2], params)
    got, stats = run(spec, token_prompts[:2], params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_drafts > 0
    tokens = list(got[0].token_ids)
    assert not any(tokens[i:i + len(window)] == window for i in range(len(tokens)))
