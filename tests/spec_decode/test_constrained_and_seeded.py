"""Requests that used to be kept out of speculation now draft, and stay exactly what decoding
one token at a time gives:

- structured outputs: drafts are cut to what the grammar allows, and each verify row is masked
  with the grammar's state after the drafts before it;
- seeded random sampling: a verify row samples with the noise of the request's seed at its
  position, so the same seed gives the same tokens with and without drafts, whatever the batch.
"""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams
from tests.spec_decode.test_engine import SPEC, prompts, run, trace
from tests.structured_output.test_engine import PROMPTS, check, constraints

LOOPING = StructuredOutputsParams(regex=r"(ab|ba|abc){30}")
"""Greedy decoding of a random model under this regex repeats itself: n-gram drafts land."""


def constrained_params(**kw) -> list[SamplingParams]:
    return [SamplingParams(temperature=0, max_tokens=48, logprobs=2, structured_outputs=c, **kw)
            for c in [*constraints(), LOOPING, LOOPING]]


def text_prompts(llm: LLM) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    texts = [*PROMPTS, "ab ab ab ab", "abc abc abc"]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


@pytest.mark.parametrize("engine_kwargs", [
    {"kv_cache_memory": "32MiB"},
    {"kv_cache_memory": "32MiB", "max_num_batched_tokens": 16},  # chunked prefill
    {"num_gpu_blocks_override": 8, "max_model_len": 128, "enable_prefix_caching": False},
])
def test_constrained_requests_draft_and_equal_plain_decoding(tiny_llama_dir, engine_kwargs):
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    token_prompts = text_prompts(plain)
    params = constrained_params()
    want, _ = run(plain, token_prompts, params)
    spec = LLM(tiny_llama_dir, speculative_config=SPEC, **{"max_model_len": 256, **engine_kwargs})
    got, stats = run(spec, token_prompts, params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    for out, p in zip(got, params):
        if out.finish_reason == "stop":  # (cut by max_tokens, a JSON text is incomplete)
            check(out.text, p.structured_outputs)
    # the two free requests accept a few; the looping constrained ones most of ~2 x 29
    assert stats.num_accepted_tokens > 30, stats
    if "num_gpu_blocks_override" in engine_kwargs:
        assert stats.num_preemptions > 0, stats


def test_drafts_the_grammar_forbids_are_cut(tiny_llama_dir):
    """The scheduler keeps only the drafts the grammar allows, and the matcher is left where
    it was (draft_prefix rolls back what it tried)."""
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    tokenizer = llm.get_tokenizer()
    from tests.engine_internals import engine_core

    scheduler = engine_core(llm).scheduler
    manager = scheduler.structured_output_manager
    params = SamplingParams(temperature=0, max_tokens=8,
                            structured_outputs=StructuredOutputsParams(regex="[0-9]{3}-x"))
    llm.llm_engine.add_request("r", {"prompt_token_ids": [5, 6, 7]}, params)
    request = scheduler.requests["r"]
    while not manager.grammar_ready(request):
        manager.wait_for_grammars([request], 1.0)
    digit = tokenizer.encode("1", add_special_tokens=False)
    letter = tokenizer.encode("q", add_special_tokens=False)
    dash = tokenizer.encode("-", add_special_tokens=False)
    assert len(digit) == len(letter) == len(dash) == 1
    d, q, m = digit[0], letter[0], dash[0]
    assert manager.draft_prefix(request, [d, d, q, d]) == [d, d]
    assert manager.draft_prefix(request, [d, d, d, m, d]) == [d, d, d, m]
    assert manager.draft_prefix(request, [q]) == []
    # nothing was consumed: the full prefix is still allowed from the start
    assert manager.draft_prefix(request, [d, d, d, m]) == [d, d, d, m]
    llm.llm_engine.abort_request(["r"])


SEEDED = [SamplingParams(temperature=t, seed=s, max_tokens=40, ignore_eos=True, logprobs=1, **kw)
          for t, s, kw in ((0.05, 1, {}), (0.1, 2, {"top_k": 8}), (0.2, 3, {"top_p": 0.8}),
                           (0.1, 4, {"min_p": 0.2, "presence_penalty": 0.5}))]


@pytest.mark.parametrize("engine_kwargs", [
    {"kv_cache_memory": "32MiB"},
    {"kv_cache_memory": "32MiB", "max_num_batched_tokens": 16},
    {"num_gpu_blocks_override": 16, "enable_prefix_caching": False},
])
def test_seeded_requests_draft_and_equal_plain_sampling(tiny_llama_dir, tiny_vocab,
                                                        engine_kwargs):
    token_prompts = prompts(tiny_vocab, len(SEEDED))
    plain = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256)
    want, _ = run(plain, token_prompts, SEEDED)
    spec = LLM(tiny_llama_dir, max_model_len=256, speculative_config=SPEC, **engine_kwargs)
    got, stats = run(spec, token_prompts, SEEDED)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_accepted_tokens > 10, stats
    # and alone, next to unseeded and greedy requests, in another order
    mixed = [SamplingParams(temperature=0.8, max_tokens=30), SEEDED[2],
             SamplingParams(temperature=0, max_tokens=30), SEEDED[0]]
    got, _ = run(spec, [token_prompts[3], token_prompts[2],
                        token_prompts[1], token_prompts[0]], mixed, tag="mixed")
    assert trace(got[1]) == trace(want[2]) and trace(got[3]) == trace(want[0])


@pytest.mark.parametrize("budget", [None, 0, 3, 9])
def test_reasoning_requests_draft_through_the_thinking(tiny_thinking_llama_dir, budget):
    """Drafts in the thinking stop before the end-of-thinking token and before the budget
    forces it (no verify row of the thinking is constrained); the answer's drafts follow the
    grammar. Output equal to decoding without drafts."""
    kwargs = dict(kv_cache_memory="32MiB", max_model_len=256, reasoning_parser="deepseek_r1")
    plain = LLM(tiny_thinking_llama_dir, **kwargs)
    spec = LLM(tiny_thinking_llama_dir, speculative_config=SPEC, **kwargs)
    tokenizer = plain.get_tokenizer()
    texts = ["Question: what is it? <think>", "again and again and again and again <think>",
             "Question: what is it? <think></think>"]
    token_prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    params = [SamplingParams(temperature=0, max_tokens=40, thinking_token_budget=budget,
                             structured_outputs=c)
              for c in (StructuredOutputsParams(regex="[0-9]{3}"), LOOPING, LOOPING)]
    want, _ = run(plain, token_prompts, params)
    got, stats = run(spec, token_prompts, params)
    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert stats.num_accepted_tokens > 0, stats


def test_thinking_drafts_stop_before_its_end_and_budget(tiny_thinking_llama_dir):
    llm = LLM(tiny_thinking_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              reasoning_parser="deepseek_r1")
    from tests.engine_internals import engine_core

    manager = engine_core(llm).scheduler.structured_output_manager
    tokenizer = llm.get_tokenizer()
    end = tokenizer.convert_tokens_to_ids("</think>")
    prompt = tokenizer.encode("Question: <think>", add_special_tokens=False)
    scheduler = engine_core(llm).scheduler
    for req_id, budget in (("free", None), ("budget", 4)):
        params = SamplingParams(temperature=0, max_tokens=8, thinking_token_budget=budget,
                                structured_outputs=StructuredOutputsParams(regex="[0-9]+"))
        llm.llm_engine.add_request(req_id, {"prompt_token_ids": prompt}, params)
    free, limited = scheduler.requests["free"], scheduler.requests["budget"]
    drafts = [11, 12, end, 13, 14, 15]
    assert manager.draft_prefix(free, drafts) == [11, 12]
    # budget 4, nothing thought yet: rows for positions 0..3 stay free, so 3 drafts + bonus
    assert manager.draft_prefix(limited, [11, 12, 16, 17, 18]) == [11, 12, 16]
    limited.structured_output.num_reasoning_tokens = 3
    assert manager.draft_prefix(limited, [11, 12]) == []
    llm.llm_engine.abort_request(["free", "budget"])
