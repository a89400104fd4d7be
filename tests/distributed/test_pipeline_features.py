"""-pp 2 with two micro-batches in flight together with what runs beside the model: n-gram
speculative decoding (drafts proposed by the last stage, verified by both stages' next step) and
structured outputs (the grammar bitmask applied by the last stage, the tokens reaching the first
through the scheduler). One engine for the module: greedy tokens with drafts equal HF's, the
drafts were verified and accepted, and JSON-schema outputs obey their schema and equal a
-pp 1 engine's."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import StructuredOutputsParams
from tests.hf_reference import hf_greedy, load_hf_model
from tests.spec_decode.test_engine import SPEC, prompts, run

SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                   "kind": {"enum": ["a", "b", "c"]}},
    "required": ["id", "kind"],
    "additionalProperties": False,
}
JSON_PROMPTS = ['{"id":', "Once upon a time", "The record is", "Hello, my name is"]


@pytest.fixture(scope="module")
def pp_llm(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
              max_num_batched_tokens=32, pipeline_parallel_size=2, speculative_config=SPEC)
    core = llm.llm_engine.engine_core.engine_core
    depth: list[int] = []
    step = core.step_with_batch_queue

    def recording_step():
        outputs = step()
        depth.append(len(core.batch_queue) + 1)
        return outputs

    core.step_with_batch_queue = recording_step
    llm.depth = depth  # type: ignore[attr-defined]
    yield llm
    core.shutdown()


def test_ngram_drafts_under_pp_equal_hf(pp_llm, tiny_llama_dir, tiny_vocab):
    token_prompts = prompts(tiny_vocab, count=6)
    max_tokens = [24 + 3 * i for i in range(len(token_prompts))]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    pp_llm.depth.clear()
    outs, stats = run(pp_llm, token_prompts, params, tag="ngram")
    hf = load_hf_model(tiny_llama_dir)
    expected = [hf_greedy(hf, p, m) for p, m in zip(token_prompts, max_tokens)]
    assert [list(o.token_ids) for o in outs] == expected
    assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0, stats
    assert max(pp_llm.depth) == 2, "two micro-batches were never in flight"


def test_json_schema_under_pp_obeys_and_equals_pp1(pp_llm, tiny_llama_dir):
    params = SamplingParams(temperature=0, max_tokens=48, structured_outputs=(
        StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)))
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    batch = [params, free, params, params]  # (a free request in the same micro-batches)
    pp_llm.depth.clear()
    outs = pp_llm.generate(JSON_PROMPTS, batch, use_tqdm=False)
    for out, p in zip(outs, batch):
        if p is params:
            assert out.outputs[0].finish_reason == "stop", out.outputs[0]
            jsonschema.validate(json.loads(out.outputs[0].text), SCHEMA)
    assert max(pp_llm.depth) == 2, "two micro-batches were never in flight"
    single = LLM(tiny_llama_dir, kv_cache_memory="32MiB", max_model_len=256,
                 max_num_batched_tokens=32)
    try:
        reference = single.generate(JSON_PROMPTS, batch, use_tqdm=False)
    finally:
        single.llm_engine.engine_core.shutdown()
    assert ([o.outputs[0].token_ids for o in outs]
            == [o.outputs[0].token_ids for o in reference])
