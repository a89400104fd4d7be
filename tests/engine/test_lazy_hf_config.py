"""The API process reads a text model's transformers config only when something asks for a field
the engine core did not send (engine/lazy_hf_config.py): building one imports ~1 300 modules."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, LlamaConfig, LlavaConfig

from pagedllm.engine.lazy_hf_config import API_FIELDS, LazyHFConfig, api_fields


def _unloadable(monkeypatch, lazy: LazyHFConfig) -> None:
    def refuse():
        raise AssertionError("the config was loaded")

    monkeypatch.setattr(lazy, "load", refuse)


def test_a_text_models_fields_are_answered_without_loading(monkeypatch):
    real = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0)
    fields = api_fields(real)
    assert not fields.has_vision_tower
    lazy = LazyHFConfig("/nowhere", fields)
    _unloadable(monkeypatch, lazy)
    missing = object()
    for name in API_FIELDS:
        # (what the API process's readers do: getattr with a default)
        assert getattr(lazy, name, missing) == getattr(real, name, missing), name
    assert "image_token_index" in fields.absent
    with pytest.raises(AttributeError):
        lazy.image_token_index  # noqa: B018 (as the real config raises)
    assert not lazy.loaded


def test_another_field_loads_the_config_once(tiny_llama_dir):
    real = AutoConfig.from_pretrained(tiny_llama_dir)
    lazy = LazyHFConfig(tiny_llama_dir, api_fields(real))
    assert not lazy.loaded
    assert lazy.rms_norm_eps == real.rms_norm_eps  # not a field the core sends
    assert lazy.loaded
    loaded = lazy.load()
    assert lazy.vocab_size == real.vocab_size and lazy.load() is loaded
    with pytest.raises(AttributeError):
        lazy.no_such_attribute  # noqa: B018


def test_a_vision_tower_is_not_a_scalar_field():
    fields = api_fields(LlavaConfig())
    assert fields.has_vision_tower
    assert "vision_config" not in fields.values and "vision_config" not in fields.absent
