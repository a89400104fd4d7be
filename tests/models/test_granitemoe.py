"""Granite MoE (Granite's multipliers over a top-k mixture of SwiGLU experts, stacked expert
checkpoint tensors) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf
from tests.models.test_granite import GRANITE

VARIANTS = {"top2_of_4": {**GRANITE, "num_local_experts": 4, "num_experts_per_tok": 2},
            "top1_of_3": {**GRANITE, "num_local_experts": 3, "num_experts_per_tok": 1,
                          "intermediate_size": 48}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("GraniteMoeConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GraniteMoeConfig", **VARIANTS[variant]))
