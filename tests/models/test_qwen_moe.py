"""Qwen2-MoE (routed experts + sigmoid-gated shared expert, unnormalized top-k, a dense layer via
mlp_only_layers) and Qwen3-MoE (q/k norm, normalized top-k, no shared expert) against HF
transformers, with a prompt longer than 64 tokens."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
VARIANTS = {
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {**_MOE, "shared_expert_intermediate_size": 48, "mlp_only_layers": [1]},
    ),
    "qwen3_moe": ("Qwen3MoeConfig", {**_MOE, "norm_topk_prob": True, "head_dim": 32}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    assert_greedy_matches_hf(tiny_model_factory(config_cls, **overrides), lengths=[1, 7, 23, 80])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    assert_logits_match_hf(tiny_model_factory(config_cls, **overrides), length=90)
