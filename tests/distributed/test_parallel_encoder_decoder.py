"""Encoder-decoders (BART, T5) under -tp 2: both stacks split by heads and FFN columns (T5's
relative-position table replicated, each rank biasing its own heads), each rank keeping its
heads' cross-attention K/V. Greedy tokens for encoder prompts of different lengths, decoder
prompts chunked, equal HF transformers' generate (fp32); -tp 1 equals HF in
tests/models/test_encoder_decoder.py. -pp is refused with its reason."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from tests.models.test_encoder_decoder import (  # noqa: F401  (the module's model builder)
    MAX_TOKENS,
    _hf,
    _hf_generate,
    _hf_logprobs,
    _prompts,
    build,
)


@pytest.mark.parametrize("variant", ["bart", "t5_v1_1"])
def test_tp2_equals_hf(build, variant):  # noqa: F811
    model_dir = build(variant)
    hf = _hf(model_dir)
    prompts = _prompts(hf.config.vocab_size)
    expected = [_hf_generate(hf, p, MAX_TOKENS) for p in prompts]
    llm = LLM(model_dir, block_size=4, kv_cache_memory="4MiB", max_model_len=24,
              max_num_batched_tokens=8, tensor_parallel_size=2)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                                logprobs=0)
        outputs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert [o.outputs[0].token_ids for o in outputs] == expected
    # log-probabilities too: a head biased from another head's column can keep the argmax
    start = hf.generation_config.decoder_start_token_id
    for prompt, out in zip(prompts, outputs):
        tokens = list(out.outputs[0].token_ids)
        ours = torch.tensor([step[t].logprob for step, t in zip(out.outputs[0].logprobs, tokens)])
        torch.testing.assert_close(ours, _hf_logprobs(hf, prompt, start, tokens), atol=1e-4,
                                   rtol=0)


def test_pp_is_refused_with_its_reason(build):  # noqa: F811
    with pytest.raises(ValueError, match="encoder-decoder; it does not run with pipeline"):
        LLM(build("bart"), pipeline_parallel_size=2)
