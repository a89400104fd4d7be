"""GLM and GLM-4 (q/k/v bias, interleaved partial rotary, stored gate_up_proj; GLM-4's sandwich
norms) against HF transformers through the whole engine, on the fused CPU stack."""

from __future__ import annotations

import pytest

from pagedllm.worker.execution_strategy import EAGER
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

VARIANTS = {"glm": ("GlmConfig", {}), "glm4": ("Glm4Config", {})}


def _model(tiny_model_factory, variant: str) -> str:
    config_cls, overrides = VARIANTS[variant]
    return tiny_model_factory(config_cls, **overrides)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(_model(tiny_model_factory, variant))
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name != EAGER, execution.declined


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(_model(tiny_model_factory, variant))
