"""Phi-3 (checkpoint-fused qkv_proj / gate_up_proj, longrope, partial rotary) against HF.

longrope: we pick one factor set for the run (long iff max_model_len > original_max_position_
embeddings, as vLLM does), HF picks per sequence length. They agree when no sequence crosses the
original length: "longrope_short" keeps max_model_len at the original (short factors,
explicit attention_factor); "longrope_long" has an original of 16 and only prompts longer than it
(long factors, attention_factor derived from max_position_embeddings / original = 32).
"""

from __future__ import annotations

import pytest

from tests.models.family_check import (
    PROMPT_LENGTHS,
    assert_greedy_matches_hf,
    assert_logits_match_hf,
)


def _longrope(num_factors: int, **extra) -> dict:
    return {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.5 * i for i in range(num_factors)],
        "long_factor": [2.0 + 3.0 * i for i in range(num_factors)],
        **extra,
    }


VARIANTS = {
    "phi3": ({"partial_rotary_factor": 0.5}, PROMPT_LENGTHS),
    "longrope_short": (
        {"original_max_position_embeddings": 512,
         "rope_parameters": _longrope(8, attention_factor=1.2)},
        PROMPT_LENGTHS,
    ),
    "longrope_long": (
        {"original_max_position_embeddings": 16, "partial_rotary_factor": 0.5,
         "rope_parameters": _longrope(4, partial_rotary_factor=0.5)},
        [17, 23, 30, 40],
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf(tiny_model_factory, variant):
    overrides, lengths = VARIANTS[variant]
    assert_greedy_matches_hf(tiny_model_factory("Phi3Config", **overrides), lengths=lengths)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    overrides, _ = VARIANTS[variant]
    assert_logits_match_hf(tiny_model_factory("Phi3Config", **overrides))
