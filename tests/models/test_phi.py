"""Phi-1/2 (parallel block, partial rotary, LayerNorm, dense and LM-head bias, gelu_new,
optional per-head q/k LayerNorm) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest

from pagedllm.worker.execution_strategy import EAGER
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

BASE = {"num_key_value_heads": None, "hidden_act": "gelu_new", "partial_rotary_factor": 0.5}
VARIANTS = {"phi2": BASE, "qk_layernorm_gqa": {**BASE, "qk_layernorm": True,
                                              "num_key_value_heads": 2}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(tiny_model_factory("PhiConfig", **VARIANTS[variant]))
    execution = engine_core(llm).executor.driver_worker.execution
    assert execution.name == EAGER and "PhiDecoderLayer" in execution.declined


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("PhiConfig", **VARIANTS[variant]))
