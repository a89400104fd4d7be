"""Qwen2 / Qwen2.5 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm) against HF transformers."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

VARIANTS = {
    "qwen2": ("Qwen2Config", {}),
    "qwen2_tied": ("Qwen2Config", {"tie_word_embeddings": True}),
    # Qwen2's sliding window applies from layer max_window_layers on: layer 1 windowed, 0 not.
    "qwen2_sliding": (
        "Qwen2Config", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}
    ),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),
    "qwen3_bias": ("Qwen3Config", {"attention_bias": True}),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    assert_greedy_matches_hf(tiny_model_factory(config_cls, **overrides))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    config_cls, overrides = VARIANTS[variant]
    assert_logits_match_hf(tiny_model_factory(config_cls, **overrides))
