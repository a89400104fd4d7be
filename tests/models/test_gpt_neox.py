"""GPT-NeoX / Pythia (parallel or sequential residual, partial rotary, per-head interleaved
query_key_value, LayerNorm, untied embed_out) against HF transformers."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads=None drops TINY_LLAMA's GQA setting, which GPT-NeoX does not have.
VARIANTS = {
    "parallel": {"num_key_value_heads": None, "rotary_pct": 0.25},
    "sequential": {"num_key_value_heads": None, "rotary_pct": 0.5, "use_parallel_residual": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    assert_greedy_matches_hf(tiny_model_factory("GPTNeoXConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GPTNeoXConfig", **VARIANTS[variant]))
