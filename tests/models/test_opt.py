"""OPT against HF transformers: pre-norm (most sizes, untied head here) and OPT-350m's layout
(post-norm, word embeddings of a smaller dim projected in and out, tied head)."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

# NOTE: OPT initializes with init_std (not initializer_range) and has no GQA.
_OPT = {"num_key_value_heads": None, "ffn_dim": 128, "init_std": 0.1}
VARIANTS = {
    "pre_norm": _OPT,
    "post_norm_projected": {
        **_OPT, "do_layer_norm_before": False, "word_embed_proj_dim": 32,
        "tie_word_embeddings": True,
    },
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    assert_greedy_matches_hf(tiny_model_factory("OPTConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("OPTConfig", **VARIANTS[variant]))
