"""OLMo 2 (post-norm block, q/k RMSNorm over the whole projection) against HF transformers,
through the whole engine (eager: the worker says why the fused stack declines it)."""

from __future__ import annotations

import pytest

from pagedllm.worker.execution_strategy import EAGER
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

VARIANTS = {"gqa": {}, "mha_bias": {"num_key_value_heads": 4, "attention_bias": True}}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(tiny_model_factory("Olmo2Config", **VARIANTS[variant]))
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name == EAGER and execution.declined


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("Olmo2Config", **VARIANTS[variant]))
