"""Mistral (Llama with a sliding window on every layer) against HF transformers, with prompts and
generations longer than the window."""

from __future__ import annotations

from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf

WINDOW = 12


def test_greedy_matches_hf_beyond_window(tiny_model_factory):
    model_dir = tiny_model_factory("MistralConfig", sliding_window=WINDOW)
    assert_greedy_matches_hf(model_dir, lengths=[5, 11, 30, 47])


def test_logits_match_hf_beyond_window(tiny_model_factory):
    assert_logits_match_hf(tiny_model_factory("MistralConfig", sliding_window=WINDOW))
