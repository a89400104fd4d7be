"""BLOOM (ALiBi in the paged attention, word-embedding LayerNorm, per-head fused query_key_value,
tied head) against HF transformers through the whole engine."""

from __future__ import annotations

import pytest
import torch
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

from pagedllm.model_executor.layers.alibi_attention import alibi_slopes
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads=None drops TINY_LLAMA's (BLOOM is multi-head)
VARIANTS = {"bloom": {"num_key_value_heads": None, "tie_word_embeddings": True},
            "post_ln_residual": {"num_key_value_heads": None,
                                 "apply_residual_connection_post_layernorm": True}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("BloomConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("BloomConfig", **VARIANTS[variant]))


def test_alibi_slopes_match_transformers():
    for num_heads in range(1, 41):  # powers of two and the odd counts between
        expected = _get_alibi_slopes(num_heads, torch.device("cpu"))
        torch.testing.assert_close(alibi_slopes(num_heads), expected, rtol=0, atol=0)
