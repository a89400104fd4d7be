"""Cohere Command-R (parallel block, bias-free LayerNorm, interleaved rotary, per-head q/k
LayerNorm, tied LM head, logit_scale) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: rms_norm_eps=None drops TINY_LLAMA's (Cohere has layer_norm_eps); logit_scale far
# from 1 so that dropping it shows in the logits.
BASE = {"rms_norm_eps": None, "layer_norm_eps": 1e-5, "logit_scale": 0.25,
        "tie_word_embeddings": True}  # fmt: skip
VARIANTS = {"command_r": BASE,
            "qk_norm_bias": {**BASE, "use_qk_norm": True, "attention_bias": True}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("CohereConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("CohereConfig", **VARIANTS[variant]))
