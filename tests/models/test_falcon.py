"""Falcon with rotary positions, both decoder layouts (new: grouped-query, one or two block
norms; old: multi-query parallel or multi-head sequential), against HF transformers through the
whole engine, and Falcon-RW's ALiBi."""

from __future__ import annotations

import pytest

from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads as FalconConfig derives it for each layout (TINY_LLAMA says 2).
BASE = {"ffn_hidden_size": 128, "layer_norm_epsilon": 1e-5}
VARIANTS = {
    "new_gqa_two_norms": {**BASE, "new_decoder_architecture": True, "num_kv_heads": 2},
    "new_one_norm_bias_tied": {**BASE, "new_decoder_architecture": True, "num_kv_heads": 1,
                               "num_key_value_heads": 1, "num_ln_in_parallel_attn": 1,
                               "bias": True, "tie_word_embeddings": True},
    "old_multi_query_parallel": {**BASE, "multi_query": True, "parallel_attn": True,
                                 "num_key_value_heads": 1},
    "old_multi_head_sequential": {**BASE, "multi_query": False, "parallel_attn": False,
                                  "num_kv_heads": 4, "num_key_value_heads": 4, "bias": True},
    # Falcon-RW's layout: ALiBi in place of rotary (6 heads: slopes that bfloat16 rounds)
    "rw_alibi": {**BASE, "alibi": True, "multi_query": False, "parallel_attn": False,
                 "num_attention_heads": 6, "hidden_size": 48, "num_kv_heads": 6,
                 "num_key_value_heads": 6, "bias": True},
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("FalconConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("FalconConfig", **VARIANTS[variant]))
