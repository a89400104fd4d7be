"""GPT-J (parallel block, interleaved rotary on the first rotary_dim dims, LM head bias)
against HF transformers through the whole engine."""

from __future__ import annotations

import pytest
import torch

from pagedllm.model_executor.layers.rotary import interleaved_to_neox_rows
from tests.models.family_check import assert_engine_matches_hf, assert_logits_match_hf

# NOTE: num_key_value_heads=None drops TINY_LLAMA's GQA setting, which GPT-J does not have.
GPTJ = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512, "num_key_value_heads": None,
        "activation_function": "gelu_new"}  # fmt: skip
VARIANTS = {"rotary_dim_8": {**GPTJ, "rotary_dim": 8}, "full_rotary": {**GPTJ, "rotary_dim": 16}}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_hf(tiny_model_factory, variant):
    assert_engine_matches_hf(tiny_model_factory("GPTJConfig", **VARIANTS[variant]))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf(tiny_model_factory, variant):
    assert_logits_match_hf(tiny_model_factory("GPTJConfig", **VARIANTS[variant]))


def test_interleaved_rows_reordered_per_head():
    rows = torch.arange(2 * 6).float()  # 2 heads of 6 dims, rotary on the first 4
    assert interleaved_to_neox_rows(rows, 6, 4).tolist() == [0, 2, 1, 3, 4, 5,
                                                              6, 8, 7, 9, 10, 11]  # fmt: skip
