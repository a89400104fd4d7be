"""-pp 2 for the families outside Llama's stack (models/pipeline_stage.py): GPT-NeoX at -pp 2
and -tp 2 x -pp 2, greedy tokens equal HF transformers' (fp32; -tp 1 equals HF in
test_tensor_parallel.py, so equal to -tp 1 too); the shared stage logic checked without an
engine: two stages chained equal the whole stack, only the last applies the final norm, and each
stage holds only its own layers. (GPT-2, Phi, Falcon, ... at -pp 2:
test_parallel_more_families.py.)"""

from __future__ import annotations

import pytest

from tests.distributed.test_tensor_parallel import FAMILIES, LENGTHS, MAX_TOKENS, run_engine
from tests.hf_reference import hf_greedy, load_hf_model
from tests.models.family_check import random_prompts


@pytest.mark.parametrize("tp, pp", [(1, 2), (2, 2)])
def test_gpt_neox_pipeline_equals_hf(tiny_model_factory, tp, pp):
    config_cls, overrides = FAMILIES["gpt_neox"]
    model_dir = tiny_model_factory(config_cls, **{**overrides, "num_hidden_layers": 3})
    hf = load_hf_model(model_dir)
    prompts = random_prompts(LENGTHS, hf.config.vocab_size)
    expected = [hf_greedy(hf, p, MAX_TOKENS) for p in prompts]
    assert run_engine(model_dir, prompts, tp=tp, pipeline_parallel_size=pp) == expected
