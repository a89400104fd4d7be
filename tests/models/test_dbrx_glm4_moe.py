"""DBRX (fused w1/v1/w2 experts, clip_qkv, bias-free LayerNorms, p-norm expert weights) and
GLM-4-MoE (partial rotary, q/k/v bias, DeepSeek-V3's sigmoid routing with the correction bias,
shared experts, dense first layers) against HF transformers fp32 through the whole engine:
greedy tokens of a chunked mixed batch, again from the prefix cache, and prefill logits."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

DBRX = {"attn_config": {"kv_n_heads": 2, "clip_qkv": 0.3, "rope_theta": 10000.0},
        # (d_model by its own name: DbrxConfig copies it into ffn_config before hidden_size maps)
        "d_model": 64,
        "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2,
                       "moe_normalize_expert_weights": 2.0}}
GLM4_MOE = {"head_dim": 16, "partial_rotary_factor": 0.5, "attention_bias": True,
            "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
            "n_shared_experts": 1, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
            "routed_scaling_factor": 1.5, "norm_topk_prob": True, "use_qk_norm": True}
VARIANTS = {"dbrx": ("DbrxConfig", DBRX), "glm4_moe": ("Glm4MoeConfig", GLM4_MOE)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_and_logits_match_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    model_dir = tiny_model_factory(config_cls, **overrides)
    assert_engine_matches_hf(model_dir)
    assert_logits_match_hf(model_dir)
