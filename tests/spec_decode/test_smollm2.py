"""The real SmolLM2 (Q4_1 GGUF, and its float32 dequantization): n-gram speculation gives the
same greedy tokens as plain decoding on copy-heavy and free prompts, alone and batched, with
chunked prefill, and the copy-heavy prompt really accepts drafts."""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.spec_workloads import WORKLOADS
from tests.spec_decode.test_engine import run

SPEC = {"method": "ngram", "num_speculative_tokens": 6, "disable_by_batch_size": None,
        "draft_token_cost": 0.1}
"""A fixed cost: measured at start-up on a busy machine it can come out high enough that
nothing drafts, and the test asserts drafts were accepted."""


@pytest.mark.gguf
@pytest.mark.slow
@pytest.mark.parametrize("quantization", [None, "none"])
def test_smollm2_greedy_is_unchanged_by_drafts(smollm2_gguf_path, quantization):
    kwargs = dict(max_model_len=1024, kv_cache_memory="256MiB", quantization=quantization,
                  max_num_batched_tokens=256)
    plain = LLM(smollm2_gguf_path, **kwargs)
    tokenizer = plain.get_tokenizer()
    texts = [WORKLOADS["code"][0], WORKLOADS["chat"][0], WORKLOADS["edit"][0]]
    token_prompts = [tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True),
        add_special_tokens=False) for t in texts]
    params = [SamplingParams(temperature=0, max_tokens=48, logprobs=1)] * len(token_prompts)
    want, _ = run(plain, token_prompts, params)
    del plain
    spec = LLM(smollm2_gguf_path, speculative_config=SPEC, **kwargs)
    got, stats = run(spec, token_prompts, params)
    alone, _ = run(spec, token_prompts[:1], params[:1])

    def trace(o):
        return list(o.token_ids), [sorted((t, lp.logprob) for t, lp in e.items())
                                   for e in o.logprobs]

    assert [trace(o) for o in got] == [trace(o) for o in want]
    assert trace(alone[0]) == trace(want[0])
    assert stats.num_accepted_tokens > 10, stats
