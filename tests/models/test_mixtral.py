"""Mixtral (sparse MoE: top-2 of 4 SwiGLU experts, renormalized softmax routing, per-expert
checkpoint matrices w1/w2/w3) against HF transformers, with a prompt longer than 64 tokens so
every expert sees many tokens of one step."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

MIXTRAL = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64}
VARIANTS = {
    "mixtral": MIXTRAL,
    "mixtral_top1_window": {**MIXTRAL, "num_experts_per_tok": 1, "sliding_window": 16},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    model_dir = tiny_model_factory("MixtralConfig", **VARIANTS[variant])
    assert_greedy_matches_hf(model_dir, lengths=[1, 7, 23, 80])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("MixtralConfig", **VARIANTS[variant]), length=90)
