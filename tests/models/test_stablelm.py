"""StableLM (LayerNorm, partial rotary, q/k/v bias, per-head q/k LayerNorm, parallel or
sequential residual) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: rms_norm_eps=None drops TINY_LLAMA's, which StableLM does not have (layer_norm_eps).
BASE = {"rms_norm_eps": None, "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.25}
VARIANTS = {
    "sequential_bias": {**BASE, "use_qkv_bias": True},
    "parallel_qk_norm": {**BASE, "use_parallel_residual": True, "qk_layernorm": True,
                         "partial_rotary_factor": 0.5},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("StableLmConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("StableLmConfig", **VARIANTS[variant]))
