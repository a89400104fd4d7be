"""Granite (embedding / residual / attention multipliers, logits scaling) against HF
transformers, through the whole engine and on the fused CPU stack where the kernels are built."""

from __future__ import annotations

import pytest

from pagedllm.kernels import cpu_kernels_available
from pagedllm.worker.execution_strategy import FUSED_CPU_STACK
from tests.engine_internals import engine_core
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: multipliers far from 1 (and attention_multiplier far from head_dim ** -0.5 = 0.25), so
# a multiplier dropped or applied twice changes the tokens.
GRANITE = {"embedding_multiplier": 6.0, "residual_multiplier": 0.4,
           "attention_multiplier": 0.09, "logits_scaling": 3.0}  # fmt: skip
VARIANTS = {"granite": GRANITE, "bias_mha": {**GRANITE, "attention_bias": True,
                                             "num_key_value_heads": 4}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    llm = assert_engine_matches_hf(tiny_model_factory("GraniteConfig", **VARIANTS[variant]))
    if cpu_kernels_available():  # the multipliers folded away: Llama's block, fused
        assert engine_core(llm).executor.driver_worker.execution.name == FUSED_CPU_STACK


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GraniteConfig", **VARIANTS[variant]))
