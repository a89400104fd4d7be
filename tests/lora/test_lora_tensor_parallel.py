"""LoRA under -tp 2: each rank's slots hold its slice of the adapters (column-parallel: B's
rows of its outputs, per packed q/k/v and gate/up shard; row-parallel: A's columns of its inputs,
the shrunk product all-reduced before B). Greedy tokens of the base and of two adapters (every
projection; k and o only) in one batch, with chunked prefill, equal -tp 1's."""

from __future__ import annotations

from pagedllm import LLM, SamplingParams
from tests.models.family_check import random_prompts

MAX_TOKENS = 10


def _generate(base: str, loras: list, prompts: list[list[int]], tp: int,
              pp: int = 1) -> list[list[int]]:
    llm = LLM(base, kv_cache_memory="16MiB", max_num_batched_tokens=16, enable_lora=True,
              max_loras=2, max_lora_rank=16, tensor_parallel_size=tp, pipeline_parallel_size=pp)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        outputs = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outputs]
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_tp2_with_adapters_equals_tp1(lora_setup):
    base, loras = lora_setup("llama")
    prompts = random_prompts([3, 9, 21, 30], 384, seed=5)
    chosen = [None, loras["all7"], loras["ko"], loras["all7"]]
    expected = _generate(base, chosen, prompts, tp=1)
    assert expected[1] != expected[0] or expected[2] != expected[0]  # the adapters matter
    assert _generate(base, chosen, prompts, tp=2) == expected
