"""The Transformers fallback: OLMo (1) has no native implementation; it runs on transformers'
modeling code with attention routed through our paged KV cache, and must match HF greedy token
for token across the whole engine (mixed lengths, chunked prefill, decodes mixed in)."""

from __future__ import annotations

import logging

import pytest

from pagedllm.model_executor.models.registry import get_model_class, implementation_of
from pagedllm.model_executor.models.transformers_fallback import TransformersForCausalLM
from tests.models.family_check import assert_greedy_matches_hf, assert_logits_match_hf


@pytest.fixture(scope="module")
def tiny_olmo_dir(tiny_model_factory) -> str:
    return tiny_model_factory("OlmoConfig", clip_qkv=8.0)


def test_registry_falls_back_to_transformers():
    assert get_model_class("OlmoForCausalLM") is TransformersForCausalLM
    assert implementation_of("OlmoForCausalLM") == "transformers fallback"
    assert implementation_of("LlamaForCausalLM") == "native"
    with pytest.raises(ValueError, match="unknown model architecture 'NoSuchForCausalLM'"):
        get_model_class("NoSuchForCausalLM")


def test_olmo_greedy_matches_hf(tiny_olmo_dir):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    loader_logger = logging.getLogger("pagedllm.model_executor.model_loader")
    loader_logger.addHandler(handler)
    try:
        assert_greedy_matches_hf(tiny_olmo_dir)
    finally:
        loader_logger.removeHandler(handler)
    # The load log says which implementation runs the model.
    assert any("transformers fallback implementation" in r.getMessage() for r in records)


def test_olmo_prefill_logits_match_hf(tiny_olmo_dir):
    assert_logits_match_hf(tiny_olmo_dir)
