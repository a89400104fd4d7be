"""GPT-BigCode (multi-query attention: one K/V head for every query head; nn.Linear c_attn
q | k | v) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads as GPTBigCodeConfig derives it (1 when multi_query), overriding
# TINY_LLAMA's 2.
VARIANTS = {
    "multi_query": {"multi_query": True, "num_key_value_heads": 1},
    "multi_head_untied": {"multi_query": False, "num_key_value_heads": 4,
                          "tie_word_embeddings": False},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("GPTBigCodeConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GPTBigCodeConfig", **VARIANTS[variant]))
