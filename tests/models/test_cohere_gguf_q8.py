"""A Q8_0 Command-R GGUF run quantized (its weights kept in their blocks, --quantization gguf)
equals the same file dequantized at load: Cohere's q/k row reorder (interleaved rotary to
rotate-half) moves whole rows of blocks, as GLM's does (weight_utils.take_rows)."""

from __future__ import annotations

from tests.models.gguf_fixtures import assert_q8_0_equals_dequantized
from tests.models.test_gguf_families import FAMILIES, write_gguf


def test_quantized_cohere_gguf_equals_dequantized(tiny_model_factory, tmp_path):
    _, config_cls, overrides, _, _ = FAMILIES["command-r"]
    hf_dir = tiny_model_factory(config_cls, **overrides)
    assert_q8_0_equals_dequantized(write_gguf(hf_dir, str(tmp_path / "tiny-command-r.Q8_0.gguf"),
                                              "command-r", q8_0=True))
